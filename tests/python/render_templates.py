"""Renders chat templates the way Hugging Face `transformers` does (its `apply_chat_template`
environment: a sandboxed Jinja2 with `trim_blocks`, `lstrip_blocks`, loop controls, the
`{% generation %}` block, `raise_exception`, `strftime_now` and a `tojson` that is
`json.dumps`), as the reference for executors/engine/tests/templates.rs. `transformers` itself
is not installed: this is its environment, written out, over the same `jinja2`.

Reads a JSON list of `{"template": SOURCE, "context": {...}}` from stdin and writes a JSON list
of `{"ok": TEXT}` or `{"error": MESSAGE}` in the same order.
"""

import json
import sys
from datetime import datetime, timezone

from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


class Generation(Extension):
    """`{% generation %}...{% endgeneration %}`: renders its body unchanged (transformers uses
    it to find the assistant's text for training masks)."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


def raise_exception(message):
    raise TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(format):
    # The engine has no local zone of its own and writes UTC; so does the reference.
    return datetime.now(timezone.utc).strftime(format)


env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
env.globals["strftime_now"] = strftime_now

results = []
for job in json.load(sys.stdin):
    try:
        results.append({"ok": env.from_string(job["template"]).render(**job["context"])})
    except Exception as error:  # the template's own failure is a result to compare
        results.append({"error": f"{type(error).__name__}: {error}"})
json.dump(results, sys.stdout)
