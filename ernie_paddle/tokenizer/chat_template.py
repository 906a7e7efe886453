"""Chat templates rendered with jinja2 the way transformers does (sandbox, trim/lstrip blocks, same globals)."""

import json
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ernie_paddle.errors import ErnieError

# The release's text template: cls token, system text + "\n", "User: ...\n", "Assistant: ..." + sep.
CHAT_TEMPLATE = (
    "{%- if not add_generation_prompt is defined -%}{%- set add_generation_prompt = true -%}{%- endif -%}\n"
    '{%- if not cls_token is defined -%}{%- set cls_token = "<|begin_of_sentence|>" -%}{%- endif -%}\n'
    '{%- if not sep_token is defined -%}{%- set sep_token = "<|end_of_sentence|>" -%}{%- endif -%}\n'
    "{{- cls_token -}}\n"
    "{%- for message in messages -%}\n"
    '{%- if message["role"] == "system" -%}{{- message["content"] + "\\n" -}}\n'
    '{%- elif message["role"] == "user" -%}{{- "User: " + message["content"] + "\\n" -}}\n'
    '{%- elif message["role"] == "assistant" -%}{{- "Assistant: " + message["content"] + sep_token -}}\n'
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    '{%- if add_generation_prompt -%}{{- "Assistant: " -}}{%- endif -%}'
)

class _GenerationTag(Extension):
    """Accept ``{% generation %}...{% endgeneration %}`` (used for assistant masks) and render its body as is."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller):
        return caller()


def _raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    """Compile ``source`` once; raise ErnieError on a syntax error."""
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag, "jinja2.ext.loopcontrols"]
    )
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ErnieError(f"chat template has a syntax error at line {exc.lineno}: {exc.message}") from exc


def check_messages(messages) -> list[dict]:
    """Validate a list of ``{"role": str, "content": ...}`` dicts; return plain copies."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ErnieError("messages must be a non-empty list of {'role': ..., 'content': ...}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise ErnieError(f"message {i} must be a dict with a string 'role' and a 'content'")
        out.append({k: v for k, v in m.items() if v is not None})
    return out


def render_chat(source: str, messages, add_generation_prompt: bool = True, **variables) -> str:
    """Render ``messages`` with the template ``source``; ``variables`` carry the special tokens and extras."""
    template = compile_template(source)
    try:
        return template.render(messages=check_messages(messages), add_generation_prompt=add_generation_prompt,
                               tools=variables.pop("tools", None), documents=variables.pop("documents", None),
                               **variables)
    except jinja2.TemplateError as exc:
        raise ErnieError(f"chat template failed: {exc}") from exc
    except TypeError as exc:
        raise ErnieError(f"chat template failed on these messages: {exc}") from exc
