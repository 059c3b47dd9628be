"""`mediajobs templates`: list, show, create and delete job templates."""
from __future__ import annotations

import argparse
from typing import Any

from google.protobuf import json_format

from mediajobs.v1 import media_resources_pb2 as mres

from .. import render
from ..client import MediaJobsClient
from .common import _group, _json_object, _leaf, _out


def add_parser(groups: Any) -> None:
    actions = _group(groups, "templates", "list, show, create and delete job templates",
                     "Job templates (conversion profiles): the outputs an entry is transcoded to.\n\n"
                     "  mediajobs templates list\n"
                     "  mediajobs templates get mp4-h264-720p\n"
                     "  mediajobs templates create web-small @web-small.json")
    _leaf(actions, "list", cmd_templates_list, "list job templates",
          "List job templates: built-ins first, then the others by id.\n"
          "With --json the output is one document: {job_templates}.")

    p = _leaf(actions, "get", cmd_templates_get, "show one job template",
              "Show a job template and its outputs.\n\n  mediajobs templates get mp4-h264-720p")
    p.add_argument("id", help="template id")

    p = _leaf(actions, "create", cmd_templates_create, "create a job template",
              "Create a job template from a JobTemplate in its JSON form and print it.\n\n"
              "  mediajobs templates create web-small @web-small.json\n"
              "  mediajobs templates create audio-only '{\"display_name\": \"AAC only\",\n"
              "      \"outputs\": [{\"name\": \"audio\", \"container\": \"mp4\", \"audio_codec\": \"aac\"}]}'\n\n"
              "ID: 4-63 characters, lowercase letters, digits and `-`, starting with a letter.")
    p.add_argument("id", help="the new template's id")
    p.add_argument("template", type=_json_object, metavar="JSON",
                   help="the template as a JSON object (display_name, description, outputs, labels), "
                        "or @FILE to read it from a file")

    p = _leaf(actions, "delete", cmd_templates_delete, "delete a job template",
              "Delete a job template (built-in templates cannot be deleted). Entries made with it keep\n"
              "their outputs.\n\n  mediajobs templates delete web-small")
    p.add_argument("id", help="template id")
    p.add_argument("--allow-missing", action="store_true", help="succeed when the template does not exist")


# -- job templates -------------------------------------------------------------------


def cmd_templates_list(args: argparse.Namespace, c: MediaJobsClient) -> int:
    templates = list(c.iter_job_templates())
    if args.json:
        _out(render.dumps({"job_templates": [render.message_to_dict(t) for t in templates]}))
    else:
        _out(render.templates_table(templates))
    return 0


def _print_template(args: argparse.Namespace, template: mres.JobTemplate) -> int:
    if args.json:
        _out(render.dumps(render.message_to_dict(template)))
    else:
        _out(render.template_details(template))
    return 0


def cmd_templates_get(args: argparse.Namespace, c: MediaJobsClient) -> int:
    return _print_template(args, c.get_job_template(args.id))


def cmd_templates_create(args: argparse.Namespace, c: MediaJobsClient) -> int:
    template = mres.JobTemplate()
    try:
        json_format.ParseDict(args.template, template)
    except json_format.ParseError as e:
        args.parser.error(f"JSON: not a JobTemplate: {e}")
    return _print_template(args, c.create_job_template(args.id, template))


def cmd_templates_delete(args: argparse.Namespace, c: MediaJobsClient) -> int:
    c.delete_job_template(args.id, allow_missing=args.allow_missing)
    if args.json:
        _out(render.dumps({"deleted_id": args.id}))
    else:
        _out(f"deleted template {args.id}")
    return 0
