"""Credentials never reach the screen, a log or the catalog.

Users pass tokens to Beam (``--beam-arg=--hf_token=...``), in URLs (``https://user:pass@host``)
or in a pipeline's ``beam_args``. What longforge shows or stores goes through :func:`redact`, and
log records of every library (Beam echoes options it does not know, values included) through
:func:`install_log_redaction`.
"""

from __future__ import annotations

import logging
import re

# A key or option that holds a secret, wherever the word sits in its name (hf_token, hftoken,
# accesstoken, api-key, passphrase, private_key, azure_connection_string), but not the parameters
# that merely count or cut tokens (max_tokens, tokenizer, tokenize_ids) or name an author.
_SECRET_WORD = (r"token(?!s|iz|[_-]budget|[_-]len|[_-]limit)|secret|passw|passphrase|api[_-]?key(?![_-]env)|"
                r"credential|(?<![a-z])auth(?!or(?!iz))|"
                r"access[_-]?key|private[_-]?key|connection[_-]?string|account[_-]?key|signature(?![_-]len)|"
                r"sas[_-]?token")
#: A value is hidden wherever it appears (a library quoting it alone) only from this length on: a
#: short one ("1", "on") would blank out ordinary text.
MIN_SECRET_LEN = 8
_SECRET = re.compile(_SECRET_WORD, re.IGNORECASE)
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^/@\s]+)@")
_TOKEN_LIKE = re.compile(r"\b(hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{16,})")
# key=value pairs inside a value (an Azure connection string's AccountKey=..., SharedAccessSignature=...)
_INNER_SECRET = re.compile(r"(?i)\b(AccountKey|SharedAccessSignature|SharedAccessKey|sig|password|pwd)=([^;&\s'\"]+)")


def redact_text(text: str) -> str:
    """A string with credentials hidden: URL user-info, well-known token shapes, --secret=VALUE."""
    text = _USERINFO.sub(lambda m: m.group("scheme") + "***@", text)
    text = _TOKEN_LIKE.sub("***", text)
    text = _INNER_SECRET.sub(lambda m: m.group(1) + "=***", text)
    if text.startswith("-") and "=" in text and _SECRET.search(text.split("=")[0]):
        text = text.split("=")[0] + "=***"
    return text


def redact(value):
    """What may be shown, logged or stored (the catalog, --dry-run, progress lines): values of
    secret-looking keys and options are hidden, including the split form ``--hf_token VALUE``."""
    if isinstance(value, dict):
        return {k: "***" if _SECRET.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        out, hide_next = [], False
        for v in value:
            if hide_next and isinstance(v, str) and not v.startswith("--"):
                out.append("***")
                hide_next = False
                continue
            hide_next = (isinstance(v, str) and v.startswith("-") and "=" not in v
                         and bool(_SECRET.search(v)))
            out.append(redact(v))
        return out
    if isinstance(value, str):
        return redact_text(value)
    return value


#: Values known to be secret in this process (those given to secret-looking options), hidden
#: wherever they appear in a log line, even alone ("Unparseable argument: VALUE").
_KNOWN_SECRETS: set[str] = set()


def secret_values(args: list[str]) -> list[str]:
    """The values of secret-looking options in an argument list, in both forms."""
    found, take_next = [], False
    for a in args:
        if take_next and not a.startswith("--"):
            found.append(a)
        take_next = False
        if a.startswith("-") and _SECRET.search(a.split("=")[0]):
            if "=" in a:
                found.append(a.split("=", 1)[1])
            else:
                take_next = True
    return [f for f in found if f]


def remember_secrets(args: list[str]) -> None:
    """Remember the secret values of an argument list (secret options' values, a URL's user-info),
    so they are hidden wherever they show up later, in whatever form a library quotes them."""
    _KNOWN_SECRETS.update(v for v in secret_values(args) if len(v) >= MIN_SECRET_LEN)
    for a in args:
        for m in _USERINFO.finditer(str(a)):
            info = m.group("info")
            _KNOWN_SECRETS.update(x for x in (info, info.split(":", 1)[-1]) if len(x) >= MIN_SECRET_LEN)


class RedactingFilter:
    """A logging filter: libraries that echo their arguments (Beam warns about options it does
    not know, values included) never print a credential."""

    def filter(self, record) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is logging's problem, not a leak
            return True
        cleaned = redact_known(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def _secret_words(message: str) -> list[str]:
    """Values that follow a secret-looking option in a printed list: "'--hf_token', 'VALUE'"."""
    found = []
    for m in re.finditer(r"['\"](-{1,2}[\w.-]+)['\"],\s*['\"]([^'\"]+)['\"]", message):
        if _SECRET.search(m.group(1)):
            found.append(m.group(2))
    for m in re.finditer(r"(-{1,2}[\w.-]+)=([^'\"\s,\]]+)", message):
        if _SECRET.search(m.group(1)):
            found.append(m.group(2))
    return [f for f in found if f != "***"]


def install_log_redaction() -> None:
    """Redact every log record of this process as it is made, whichever logger or handler it takes."""
    old = logging.getLogRecordFactory()
    if getattr(old, "longforge_redacting", False):
        return
    check = RedactingFilter()

    def factory(*args, **kwargs):
        record = old(*args, **kwargs)
        check.filter(record)
        return record

    factory.longforge_redacting = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def redact_known(text: str) -> str:
    """redact_text, and the values known to be secret in this process hidden wherever they appear."""
    cleaned = redact_text(text)
    for word in [*_secret_words(text), *_KNOWN_SECRETS]:
        if len(word) >= MIN_SECRET_LEN:
            cleaned = cleaned.replace(word, "***")
    return cleaned


class RedactingStream:
    """A text stream (the process's stderr) that hides credentials in what is written to it: error
    messages that quote a URL with ``user:password@`` (a botocore traceback included) and values
    of secret-looking options never reach the screen."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(redact_known(text))
        return len(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def install_stderr_redaction() -> None:
    import sys

    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
