"""Who is speaking: identities (Ed25519), the federation roster, signed envelopes (JWS), the silo's
gate (signature, address, expiry, replay, policy), the coordinator's signer, and the audit trail.

Every step a coordinator sends is a JWS the coordinator signs; every reply is a JWS the addressed
silo signs. Embedded mode makes keys per job, so the same checks run in every test and job.
"""
