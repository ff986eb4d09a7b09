"""Server-sent events stay one line per event whatever characters the model generates."""
import json

from openseason.serve.app import _sse


def test_sse_event_is_one_line_for_any_text():
    text = "a\u2028b\u2029c\x85d\x1ce\rf\ng\u00e9\U0001f600"
    raw = _sse({"choices": [{"delta": {"content": text}}]}).decode()
    lines = raw.splitlines()
    assert lines[0].startswith("data: ") and lines[1:] == [""]
    assert json.loads(lines[0][6:])["choices"][0]["delta"]["content"] == text
