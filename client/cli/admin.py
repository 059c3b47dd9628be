"""`mediajobs admin`: projects, API keys and the audit log (AdminService),
through a running server, with an admin key.

An admin key of the server's home project ("default" unless the server is
configured with another) is a system admin: every project and every key. An
admin key of another project manages its own project's keys and reads its
own project and audit entries; anything of another project is NOT_FOUND, as
if it did not exist."""
from __future__ import annotations

import argparse
from typing import Any, Iterable

from mediajobs.v1 import admin_service_pb2 as asvc

from .. import render
from ..admin import AdminClient
from ..client import MediaJobsClient
from .common import _add_quiet, _group, _leaf, _note, _out, _positive

ROLES = ("admin", "editor", "worker", "viewer")
NAME_RULE = ("1-63 characters: lowercase letters, digits and '-', starting with a letter and not ending with '-'")

ADMIN_DESCRIPTION = """\
Projects, API keys and the audit log of a server with --auth keys, through
AdminService; every action needs an admin key (--api-key or MEDIAJOBS_API_KEY).

Every job, entry, template, cue point, media info, bulk upload, live job and
API key belongs to one project, and a key's calls read and write its own
project's alone. The server's home project ("default" unless the server is
configured with another) always exists and cannot be deleted.

Who may do what:
  system admin   an admin key of the home project (or anyone on a server with
                 --auth none): every project, every project's keys and audit
                 entries; creates and deletes projects
  project admin  an admin key of any other project: reads its own project,
                 creates, lists and revokes its own project's keys, reads its
                 own audit entries; anything of another project is NOT_FOUND

  mediajobs admin projects create acme --display-name "ACME Inc."
  KEY=$(mediajobs admin keys create --project acme --role admin --name acme-ops)
  mediajobs admin keys list --project acme
  mediajobs admin keys revoke 01HA255YE6H6DEETJ5M6595ZDA
  mediajobs admin projects delete acme --force     # and everything it holds
  mediajobs admin audit --project acme

Each change is written to the audit log in the same transaction
(PROJECT_CREATED, PROJECT_DELETED, KEY_CREATED, KEY_REVOKED).
The first admin key is made without a server: `mediajobs-server keys create
--role admin` (it creates its --project when missing)."""


def add_parser(groups: Any) -> None:
    kinds = _group(groups, "admin", "manage projects and API keys, read the audit log (admin keys)",
                   ADMIN_DESCRIPTION)

    # -- projects
    actions = _group(kinds, "projects", "create, show, list and delete projects",
                     "Projects (tenants). Creating and deleting them needs a system admin: an admin key\n"
                     "of the server's home project. A project admin sees its own project only.\n\n"
                     "  mediajobs admin projects create acme --display-name 'ACME Inc.'\n"
                     "  mediajobs admin projects list\n"
                     "  mediajobs admin projects delete acme --force")

    p = _leaf(actions, "create", cmd_projects_create, "create a project (system admins)",
              f"Create a project. NAME: {NAME_RULE}.\n"
              "Its keys are made afterwards with `mediajobs admin keys create --project NAME`.\n\n"
              "Examples:\n"
              "  mediajobs admin projects create acme\n"
              "  mediajobs admin projects create acme-prod --display-name 'ACME production' --description '...'")
    p.add_argument("name", metavar="NAME", help="the project's name (fixed for its life)")
    p.add_argument("--display-name", default="", metavar="TEXT", help="a name for people, at most 256 characters")
    p.add_argument("--description", default="", metavar="TEXT", help="free text, at most 1024 characters")
    _add_quiet(p, "project")

    p = _leaf(actions, "get", cmd_projects_get, "show one project",
              "Show one project: name, display name, description, creator, creation time and whether\n"
              "it is the server's home project.\n\n"
              "Examples:\n"
              "  mediajobs admin projects get acme\n"
              "  mediajobs admin projects get acme --json")
    p.add_argument("name", metavar="NAME", help="the project's name")

    p = _leaf(actions, "list", cmd_projects_list, "list projects",
              "List every project (a project admin: its own), by name. The home project is marked\n"
              "`yes` under HOME. With --json: {projects}.")

    p = _leaf(actions, "delete", cmd_projects_delete, "delete a project (system admins)",
              "Delete a project and its API keys (which stop working at once). Refused while it\n"
              "holds anything (jobs, entries, templates, cue points, media info, bulk uploads, live\n"
              "jobs, ...: the error names what is left) unless --force, which deletes all of it in\n"
              "one transaction. The audit log keeps the project's entries. Files under the storage\n"
              "root are NOT deleted. The server's home project can never be deleted.\n"
              "Prints the rows deleted, by table.\n\n"
              "Examples:\n"
              "  mediajobs admin projects delete acme\n"
              "  mediajobs admin projects delete acme --force")
    p.add_argument("name", metavar="NAME", help="the project's name")
    p.add_argument("--force", action="store_true", help="also delete everything the project holds")

    # -- keys
    actions = _group(kinds, "keys", "create, list and revoke API keys",
                     "API keys. A system admin manages every project's keys; a project admin its own\n"
                     "project's. A key is `mjk_<id>_<secret>`, stored only as a hash: `keys create` prints\n"
                     "it once.\n\n"
                     "  mediajobs admin keys create --project acme --role editor --name ci\n"
                     "  mediajobs admin keys list --project acme --revoked\n"
                     "  mediajobs admin keys revoke 01HA255YE6H6DEETJ5M6595ZDA")

    p = _leaf(actions, "create", cmd_keys_create, "create an API key and print it once",
              "Create an API key and print the key alone on stdout (the rest goes to stderr), once:\n"
              "it cannot be read again. Keep it where your secrets go. With --json: {api_key, key}.\n\n"
              "Roles: admin (everything, and AdminService), editor (reads and every change),\n"
              "worker (WorkerService, the engines' batch calls, GetJob of the jobs it holds),\n"
              "viewer (reads and watches).\n\n"
              "Examples:\n"
              "  mediajobs admin keys create --project acme --role admin --name acme-ops\n"
              "  export MEDIAJOBS_API_KEY=$(mediajobs admin keys create --project acme --role editor)")
    p.add_argument("--project", default="", metavar="P",
                   help="the key's project, which must exist (default: your key's own project)")
    p.add_argument("--role", required=True, type=str.lower, choices=ROLES, help="what the key may do")
    p.add_argument("--name", default="", metavar="N", help="a name to recognise it by, at most 128 characters")

    p = _leaf(actions, "list", cmd_keys_list, "list API keys (never their secrets)",
              "List API keys by id (oldest first): project, role, name, creator, creation and last-use\n"
              "times (last use is written at most once a minute). Live keys only unless --revoked.\n"
              "A system admin sees every project's keys unless --project; a project admin its own.\n"
              "With --json: {api_keys}.\n\n"
              "Examples:\n"
              "  mediajobs admin keys list\n"
              "  mediajobs admin keys list --project acme --revoked --json")
    p.add_argument("--project", default="", metavar="P", help="only this project's keys")
    p.add_argument("--revoked", action="store_true", help="also list revoked keys")

    p = _leaf(actions, "revoke", cmd_keys_revoke, "revoke an API key",
              "Revoke an API key by its id: it is refused from the moment this command returns.\n"
              "Revoking a revoked key changes nothing. Never pass the key text itself.\n\n"
              "Examples:\n"
              "  mediajobs admin keys revoke 01HA255YE6H6DEETJ5M6595ZDA")
    p.add_argument("id", metavar="ID", help="the key's id (26 characters, as `keys list` shows it)")

    # -- audit
    p = _leaf(kinds, "audit", cmd_audit, "print the audit log of admin actions",
              "Print the audit log, newest first: projects created and deleted, keys created and\n"
              "revoked, with who did it and when. The last --limit entries (default 50) unless\n"
              "--all. A system admin sees every project's (a deleted project's too, with\n"
              "--project); a project admin its own. With --json: {entries}.\n\n"
              "Examples:\n"
              "  mediajobs admin audit\n"
              "  mediajobs admin audit --project acme --all --json")
    p.add_argument("--project", default="", metavar="P", help="only this project's entries")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--limit", type=_positive, default=50, metavar="N", help="at most N entries (default 50)")
    which.add_argument("--all", action="store_true", help="every entry")


# -- output -----------------------------------------------------------------------------------


def project_details(p: asvc.Project) -> str:
    return render.details([
        ("name", p.name), ("display_name", p.display_name or "-"), ("description", p.description or "-"),
        ("home", "yes (the server's home project)" if p.home else "no"), ("creator", p.creator or "-"),
        ("create_time", render.fmt_time(p.create_time))])


def projects_table(projects: Iterable[asvc.Project]) -> str:
    return render.table(("NAME", "DISPLAY NAME", "HOME", "CREATOR", "CREATED"), (
        [p.name, p.display_name or "-", "yes" if p.home else "-", p.creator or "-", render.fmt_time(p.create_time)]
        for p in projects))


def keys_table(keys: Iterable[asvc.ApiKey], revoked: bool) -> str:
    headers = ("ID", "PROJECT", "ROLE", "CREATED", "LAST USED") + (("REVOKED",) if revoked else ()) + ("NAME",)
    return render.table(headers, (
        [k.id, k.project, k.role, render.fmt_time(k.create_time), render.fmt_time(k.last_used_time)]
        + ([render.fmt_time(k.revoke_time)] if revoked else []) + [k.name or "-"]
        for k in keys))


def audit_table(entries: Iterable[asvc.AuditEntry]) -> str:
    return render.table(("TIME", "PROJECT", "ACTION", "SUBJECT", "ACTOR", "DETAIL"), (
        [render.fmt_time(e.time), e.project, e.action, e.subject, e.actor, e.detail or "-"] for e in entries))


def _counts(rows: Any) -> str:
    return ", ".join(f"{t} {n}" for t, n in sorted(rows.items()))


# -- commands ---------------------------------------------------------------------------------


def cmd_projects_create(args: argparse.Namespace, c: MediaJobsClient) -> int:
    p = AdminClient(c).create_project(args.name, display_name=args.display_name, description=args.description)
    if args.quiet:
        _out(p.name)
    elif args.json:
        _out(render.dumps(render.message_to_dict(p)))
    else:
        _out(f"project {p.name} created\n" + project_details(p))
        _note(f"mediajobs: make its keys with `mediajobs admin keys create --project {p.name} --role admin`")
    return 0


def cmd_projects_get(args: argparse.Namespace, c: MediaJobsClient) -> int:
    p = AdminClient(c).get_project(args.name)
    _out(render.dumps(render.message_to_dict(p)) if args.json else project_details(p))
    return 0


def cmd_projects_list(args: argparse.Namespace, c: MediaJobsClient) -> int:
    projects = list(AdminClient(c).iter_projects())
    if args.json:
        _out(render.dumps({"projects": [render.message_to_dict(p) for p in projects]}))
    else:
        _out(projects_table(projects))
    return 0


def cmd_projects_delete(args: argparse.Namespace, c: MediaJobsClient) -> int:
    resp = AdminClient(c).delete_project(args.name, force=args.force)
    if args.json:
        _out(render.dumps(render.message_to_dict(resp)))
        return 0
    _out(f"deleted project {resp.project.name}" + (f" ({_counts(resp.deleted_rows)})" if resp.deleted_rows else ""))
    return 0


def cmd_keys_create(args: argparse.Namespace, c: MediaJobsClient) -> int:
    made = AdminClient(c).create_api_key(args.project, args.role, name=args.name)
    if args.json:  # the key included: this is the moment it is shown
        _out(render.dumps(render.message_to_dict(made)))
        return 0
    k = made.api_key
    _note(f"created key {k.id} ({k.role} of project {k.project}); it is shown once:")
    _out(made.key)
    return 0


def cmd_keys_list(args: argparse.Namespace, c: MediaJobsClient) -> int:
    keys = list(AdminClient(c).iter_api_keys(project=args.project, include_revoked=args.revoked))
    if args.json:
        _out(render.dumps({"api_keys": [render.message_to_dict(k) for k in keys]}))
    else:
        _out(keys_table(keys, args.revoked))
    return 0


def cmd_keys_revoke(args: argparse.Namespace, c: MediaJobsClient) -> int:
    k = AdminClient(c).revoke_api_key(args.id.strip())
    if args.json:
        _out(render.dumps(render.message_to_dict(k)))
    else:
        _out(f"revoked key {k.id} ({k.role} of project {k.project}) at {render.fmt_time(k.revoke_time)}")
    return 0


def cmd_audit(args: argparse.Namespace, c: MediaJobsClient) -> int:
    admin = AdminClient(c)
    entries: list[asvc.AuditEntry] = []
    more = False
    for e in admin.iter_audit_entries(project=args.project, page_size=100 if args.all else min(args.limit + 1, 1000)):
        if not args.all and len(entries) == args.limit:
            more = True
            break
        entries.append(e)
    if args.json:
        _out(render.dumps({"entries": [render.message_to_dict(e) for e in entries]}))
    else:
        _out(audit_table(entries))
    if more:
        _note(f"-- the newest {len(entries)} entries; more with --limit N or --all")
    return 0
