"""``/docs``: the API's reference as one self-contained page, written from its OpenAPI schema on the server.

FastAPI's own page loads Swagger UI's scripts from a CDN, and so is blank on a machine without internet; this
one needs nothing beyond the service (the machine-readable schema stays at ``/openapi.json``).
"""

from __future__ import annotations

import html
import json
from typing import Any

STYLE = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
         "h2{margin-top:2rem;border-bottom:1px solid #ddd}code,pre{background:#f4f4f4;padding:.1rem .3rem}"
         "pre{padding:.6rem;overflow-x:auto}table{border-collapse:collapse}td,th{border:1px solid #ddd;"
         "padding:.2rem .5rem;text-align:left;vertical-align:top}.method{font-weight:bold;text-transform:uppercase}")


def page(schema: dict[str, Any]) -> str:
    """The HTML page of an OpenAPI ``schema``: every path and method, its summary and description, its
    query parameters and the shape of its request body."""
    info = schema.get("info", {})
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{escape(info.get('title', 'API'))}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>{escape(info.get('title', 'API'))}</h1><p>{escape(info.get('summary', ''))}</p>",
             "<p>The machine-readable schema: <a href='/openapi.json'>/openapi.json</a>.</p>"]
    components = schema.get("components", {}).get("schemas", {})
    for path, methods in schema.get("paths", {}).items():
        for method, operation in methods.items():
            parts.append(f"<h2><span class='method'>{escape(method)}</span> <code>{escape(path)}</code></h2>")
            parts.append(f"<p>{escape(operation.get('summary', ''))}</p>")
            if operation.get("description"):
                parts.append(f"<pre>{escape(operation['description'])}</pre>")
            parameters = operation.get("parameters", [])
            if parameters:
                parts.append("<table><tr><th>parameter</th><th>in</th><th>required</th><th>type</th></tr>")
                parts += [f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p.get('in', ''))}</td>"
                          f"<td>{'yes' if p.get('required') else 'no'}</td>"
                          f"<td>{escape(kind(p.get('schema', {})))}</td></tr>" for p in parameters]
                parts.append("</table>")
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body:
                parts.append(f"<p>JSON body:</p><pre>{escape(json.dumps(resolved(body, components), indent=1))}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts)


def kind(schema: dict[str, Any]) -> str:
    """A parameter's type in a few words."""
    if "anyOf" in schema:
        return " or ".join(kind(option) for option in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(map(str, schema["enum"]))
    if schema.get("type") == "array":
        return f"list of {kind(schema.get('items', {}))}"
    return str(schema.get("type", "any"))


def resolved(schema: Any, components: dict[str, Any], depth: int = 0) -> Any:
    """A schema with its ``$ref``s replaced by the components they name (a few levels deep)."""
    if isinstance(schema, dict):
        if "$ref" in schema and depth < 4:
            return resolved(components.get(schema["$ref"].rpartition("/")[2], {}), components, depth + 1)
        return {key: resolved(value, components, depth) for key, value in schema.items() if key != "title"}
    if isinstance(schema, list):
        return [resolved(value, components, depth) for value in schema]
    return schema


def escape(text: object) -> str:
    return html.escape(str(text))
