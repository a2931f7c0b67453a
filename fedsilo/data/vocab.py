"""Phrase banks for the offline generators: per label, shared across labels, and per silo style.

Labels overlap on purpose (chest pain is cardiac and pulmonary; a declined card is fraud or a
lost card), so the task is learnable but not trivial.
"""

MEDICAL = {
    "cardiology": [
        "chest pain radiating to the left arm", "elevated troponin", "ST elevation on ECG",
        "palpitations", "shortness of breath on exertion", "murmur on auscultation",
        "ankle edema", "atrial fibrillation", "started on beta blocker", "echo shows reduced EF",
    ],
    "pulmonology": [
        "productive cough", "wheezing", "shortness of breath", "chest pain on inspiration",
        "reduced oxygen saturation", "crackles at the lung bases", "infiltrate on chest x-ray",
        "history of smoking", "started on inhaled bronchodilator", "spirometry shows obstruction",
    ],
    "gastroenterology": [
        "epigastric pain", "nausea and vomiting", "black tarry stools", "abdominal distension",
        "elevated liver enzymes", "heartburn after meals", "chest pain after eating",
        "colonoscopy scheduled", "started on proton pump inhibitor", "weight loss",
    ],
    "neurology": [
        "sudden onset headache", "weakness of the right arm", "slurred speech", "seizure",
        "numbness in both feet", "facial droop", "dizziness", "MRI shows lesion",
        "started on anticonvulsant", "memory complaints",
    ],
    "orthopedics": [
        "knee pain after a fall", "swelling of the ankle", "reduced range of motion",
        "low back pain", "fracture on x-ray", "pain when bearing weight", "shoulder stiffness",
        "numbness in both feet", "referred for physiotherapy", "cast applied",
    ],
}

FINANCE = {
    "card_lost": [
        "lost my card", "card was stolen", "cannot find my debit card", "need a replacement card",
        "block my card", "left my card at a restaurant", "card declined at the shop",
        "freeze the card please",
    ],
    "transfer_failed": [
        "transfer did not arrive", "payment is still pending", "money left my account but",
        "wrong IBAN", "transfer was rejected", "send money abroad", "beneficiary has not received",
        "declined transfer",
    ],
    "loan_inquiry": [
        "interest rate on a personal loan", "apply for a mortgage", "increase my credit limit",
        "loan repayment schedule", "pay off my loan early", "how much can I borrow",
        "monthly instalment", "credit score",
    ],
    "fraud_report": [
        "transaction I did not make", "someone used my card", "suspicious charge",
        "phishing email asking for my PIN", "card declined at the shop", "unknown payment abroad",
        "account was hacked", "dispute a charge",
    ],
    "account_fees": [
        "charged a monthly fee", "overdraft fee", "why was I charged", "refund the fee",
        "fee for using the ATM", "account maintenance charge", "foreign transaction fee",
        "monthly instalment",
    ],
}

TELECOM = {
    "billing": [
        "my bill is higher than usual", "charged twice this month", "refund for the overcharge",
        "explain the extra charges", "direct debit failed", "invoice is wrong",
        "data add-on I did not order", "pay my bill",
    ],
    "network_outage": [
        "no signal since this morning", "internet keeps dropping", "calls fail in my area",
        "mobile data not working", "very slow connection", "outage in the neighbourhood",
        "cannot make calls", "no service on my phone",
    ],
    "roaming": [
        "travelling abroad next week", "roaming charges", "no data while abroad",
        "enable international roaming", "phone not working in France", "roaming bundle",
        "charged for data abroad", "no service on my phone",
    ],
    "device_setup": [
        "set up my new phone", "activate the eSIM", "transfer my contacts", "APN settings",
        "voicemail not working", "router setup", "SIM card not recognised",
        "mobile data not working",
    ],
    "contract_cancel": [
        "cancel my contract", "end my subscription", "leave at the end of the contract",
        "early termination fee", "port my number to another provider", "downgrade my plan",
        "stop the direct debit", "too expensive, I want to leave",
    ],
}

LABELS = {"medical": MEDICAL, "finance": FINANCE, "telecom": TELECOM}

FILLER = {
    "medical": [
        "vitals stable", "no known allergies", "family history unremarkable", "afebrile",
        "blood pressure 140/90", "follow up in two weeks", "patient is anxious",
        "labs pending", "history of diabetes", "non smoker",
    ],
    "finance": [
        "thanks in advance", "as soon as possible", "this is urgent", "I have been a customer",
        "my account number is on file", "please call me back", "I tried the app",
        "nobody answered the phone",
    ],
    "telecom": [
        "thanks", "this is the third time I contact you", "my number is on file",
        "I am on the unlimited plan", "please fix this", "I tried restarting",
        "since yesterday", "very disappointed",
    ],
}

# One template per silo style; {age}, {sex}, {findings}, {filler} are filled per example.
STYLES = {
    "medical": [
        "Pt {age}{sex_short} c/o {findings}. {filler}.",
        "The patient is a {age}-year-old {sex} who presents with {findings}. {filler}.",
        "CHIEF COMPLAINT: {findings}. HISTORY: {filler}. PLAN: see assessment.",
    ],
    "finance": [
        "Dear bank, {findings}. {filler}. Kind regards",
        "hi {findings} {filler}",
        "Call summary: customer says {findings}; {filler}.",
    ],
    "telecom": [
        "{findings}!! {filler}",
        "Hello support team, {findings}. {filler}. Best wishes",
        "Technician note: customer reports {findings}. {filler}.",
    ],
}
