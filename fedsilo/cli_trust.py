"""The CLI's trust commands: `fedsilo keys`, `fedsilo roster` and `fedsilo audit verify`.

fedsilo keys init --silo hospital-a            # at the silo: make its key, print the public half
fedsilo keys init --coordinator --roster R     # at the coordinator: make its key, pin it in R
fedsilo roster add hospital-a KEY --roster R   # enrol a silo (--replace rotates its key)
fedsilo roster remove hospital-a --roster R    # revoke it
fedsilo audit verify audit.jsonl --roster R    # check a chain and its signatures
"""

import argparse
import os
from pathlib import Path

from fedsilo.privacy.pending import STATE_ENV, state_folder
from fedsilo.trust.identity import COORDINATOR, coordinator_folder, load_identity, load_or_make
from fedsilo.trust.roster import enrol, load_roster, revoke, roster_path, save_roster


def _key_folder(args: argparse.Namespace) -> tuple[str, Path]:
    """Whose key and where: the coordinator's folder, or the silo's under its state root."""
    if args.coordinator:
        return COORDINATOR, Path(args.state) if args.state else coordinator_folder()
    if not args.silo:
        raise SystemExit("fedsilo keys: name the party: --silo NAME or --coordinator")
    if args.state:
        os.environ[STATE_ENV] = str(Path(args.state).resolve())
    return args.silo, state_folder(args.silo)


def cmd_keys(args: argparse.Namespace) -> int:
    """Make (init) or print (show) a party's Ed25519 key; the private half never leaves its folder."""
    name, folder = _key_folder(args)
    if args.action == "init":
        identity, made = load_or_make(folder, name)
        print(f"{'made' if made else 'kept'} the key of {name} at {folder / 'identity.key'} (mode 0600)")
    else:
        identity = load_identity(folder, name)
    print(f"{name} {identity.public_key}")
    if args.coordinator and args.roster:
        roster = load_roster(args.roster, must_exist=False).model_copy(
            update={"coordinator": identity.public_key}
        )
        print(
            f"pinned in {save_roster(roster, args.roster)}: give each silo a copy (fedsilo worker --roster)"
        )
    elif not args.coordinator and args.action == "init":
        print(f"enrol it at the coordinator: fedsilo roster add {name} {identity.public_key}")
    return 0


def cmd_roster(args: argparse.Namespace) -> int:
    """Enrol, revoke or list silos in the roster file."""
    path = roster_path(args.roster)
    if args.action == "show":
        roster = load_roster(path)
        print(f"coordinator  {roster.coordinator or '(none: fedsilo keys init --coordinator --roster)'}")
        for silo, entry in sorted(roster.silos.items()):
            pins = f"  max_examples={entry.max_examples}" if entry.max_examples else ""
            print(f"{silo:<24} {entry.public_key}{pins}  {entry.contact}".rstrip())
        return 0
    roster = load_roster(path, must_exist=False)
    if args.action == "add":
        roster = enrol(roster, args.silo, args.public_key, args.replace, args.max_examples, args.contact)
    else:
        roster = revoke(roster, args.silo)
    save_roster(roster, path)
    print(f"{args.action == 'add' and 'enrolled' or 'revoked'} {args.silo} in {path}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """Check an audit chain (and with --roster its signatures); print it as a table."""
    from fedsilo.trust.audit import verify_command

    return verify_command(args.file, args.roster)


def add_commands(commands) -> None:
    """Add `keys`, `roster` and `audit` to the CLI's subcommands."""
    keys = commands.add_parser("keys", help="make or show a silo's or the coordinator's signing key")
    keys.add_argument("action", choices=["init", "show"])
    who = keys.add_mutually_exclusive_group(required=True)
    who.add_argument("--silo", help="the silo whose key it is (kept in its state folder)")
    who.add_argument("--coordinator", action="store_true", help="the coordinator's key")
    keys.add_argument("--state", help="state folder (silo: FEDSILO_SILO_STATE's root; coordinator: its own)")
    keys.add_argument("--roster", help="with --coordinator: pin its public key in this roster file")
    keys.set_defaults(handler=cmd_keys)

    roster = commands.add_parser("roster", help="enrol, revoke or list the federation's silos")
    actions = roster.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="enrol a silo by its public key (`fedsilo keys show --silo`)")
    add.add_argument("silo")
    add.add_argument("public_key")
    add.add_argument("--max-examples", type=int, help="the most training examples it may claim")
    add.add_argument("--contact", default="", help="who to call about this silo")
    add.add_argument("--replace", action="store_true", help="rotate: replace the key it has")
    remove = actions.add_parser("remove", help="revoke a silo: its requests and replies are refused")
    remove.add_argument("silo")
    actions.add_parser("show", help="list the roster")
    for sub in (add, remove, actions.choices["show"]):
        sub.add_argument("--roster", help="roster file (default FEDSILO_ROSTER or .fedsilo/roster.yaml)")
    roster.set_defaults(handler=cmd_roster)

    audit = commands.add_parser("audit", help="check an audit trail")
    audit_actions = audit.add_subparsers(dest="action", required=True)
    verify = audit_actions.add_parser(
        "verify", help="check a chain's links and, with --roster, its signatures"
    )
    verify.add_argument("file")
    verify.add_argument("--roster", help="roster file whose keys check the signatures")
    audit.set_defaults(handler=cmd_audit)
