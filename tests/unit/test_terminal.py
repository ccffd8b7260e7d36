"""Operator output: whatever the scientist wrote is shown, never obeyed by the terminal."""

from __future__ import annotations

import io
import unicodedata
from pathlib import Path

import pytest

from datasites.cli.terminal import printable, say


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\x1b[2J\x1b[1;1Hvetted", "\\x1b[2J\\x1b[1;1Hvetted"),  # clear screen, home
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),  # OSC: set the window title, BEL
        ("custom\rvetted", "custom\\x0dvetted"),  # carriage return overwrites the line
        ("custom\x08\x08\x08\x08\x08\x08vetted", "custom" + "\\x08" * 6 + "vetted"),
        ("\x9b2K", "\\x9b2K"),  # C1 CSI, the one-character ESC [
        ("\x85next", "\\x85next"),  # C1 next line
        ("abc\x7f", "abc\\x7f"),  # DEL
        ("\x00\x0b\x0c", "\\x00\\x0b\\x0c"),  # NUL, vertical tab, form feed
        ("evil\u202efdp.exe", "evil\\u202efdp.exe"),  # right-to-left override
        ("\u2066a\u2069\u2067b\u2069", "\\u2066a\\u2069\\u2067b\\u2069"),  # bidi isolates
        ("vet\u200bted\u200d\ufeff\u2060", "vet\\u200bted\\u200d\\ufeff\\u2060"),  # zero width
        ("line\u2028break\u2029", "line\\u2028break\\u2029"),  # line/paragraph separator
        ("tag\U000e0041", "tag\\U000e0041"),  # invisible tag character
        ("half\ud800", "half\\ud800"),  # lone surrogate: unencodable, would crash print
    ],
)
def test_control_and_format_characters_are_made_visible(text: str, expected: str) -> None:
    assert printable(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "plain ASCII, with punctuation: ~!@#$%^&*()[]{}",
        "multi\nline\ttabbed\n",
        "Hôpital Universitaire de Genève, Zürich, São Paulo",
        "北京协和医院 病理科",
        "Ελληνικά, русский, العربية, עברית, हिन्दी",
        "emoji \U0001f3e5 and combining e\u0301",
        r"a literal backslash \x1b stays as typed",
    ],
)
def test_ordinary_text_passes_unchanged(text: str) -> None:
    assert printable(text) == text


def test_no_unsafe_character_survives() -> None:
    """Every code point of the unsafe categories, in one string, comes out escaped."""
    unsafe = "".join(
        chr(c)
        for c in range(0x110000)
        if unicodedata.category(chr(c)) in ("Cc", "Cf", "Cs", "Zl", "Zp") and chr(c) not in "\n\t"
    )

    shown = printable(unsafe)

    assert shown.isascii() and shown.isprintable()
    assert shown.count("\\") == len(unsafe)


def test_say_prints_through_printable() -> None:
    out = io.StringIO()

    say("custom\rvetted\x1b[0m", file=out)

    assert out.getvalue() == "custom\\x0dvetted\\x1b[0m\n"


def test_the_audit_command_prints_through_printable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whatever a line of the log renders to, the terminal gets it escaped."""
    from datasites.cli import report
    from datasites.site.audit import AuditLog

    AuditLog.open(tmp_path).append("denied", reason="fewer rounds")
    monkeypatch.setattr(report, "format_entry", lambda entry: "ok\r\x1b[32mapproved\u202e")

    assert report.audit(tmp_path, verify=False, as_json=False) == 0

    assert capsys.readouterr().out == "ok\\x0d\\x1b[32mapproved\\u202e\n"


def test_the_command_line_routes_every_print_through_say(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`requests` lists a hostile scientist's name and summary with the escapes visible."""
    import datasites.__main__ as cli
    from datasites.governance import operator

    class View:
        id, status, scientist = "r" * 12, "pending", "eve\x1b[2K\r@x.org"

        def summary(self) -> str:
            return "vetted\u202e: ehr_mlp"

    class FakeOperator:
        @classmethod
        def open(cls, data_dir: Path, hospital: str) -> FakeOperator:
            return cls()

        def requests(self) -> list[View]:
            return [View()]

    monkeypatch.setattr(operator, "Operator", FakeOperator)

    assert cli.main(["requests", "--hospital", "hospital-a"]) == 0

    out = capsys.readouterr().out
    assert "eve\\x1b[2K\\x0d@x.org" in out and "vetted\\u202e: ehr_mlp" in out
    assert "\x1b" not in out and "\r" not in out
