"""The Go template subset of ``inspect --format`` (soute.cli.gotemplate); what docker
prints for the same templates is checked in test_run_differential."""

from __future__ import annotations

import pytest

from soute.cli.gotemplate import TemplateError, render

DATA = {"Id": "sha256:ab", "Tags": ["a:1", "b:2"], "Empty": [], "Null": None,
        "Config": {"Env": ["A=1"], "Labels": {"k": "v", "j": "w"}, "Port": 80, "On": True}}


@pytest.mark.parametrize(("template", "out"), [
    ("{{.Id}}", "sha256:ab"),
    ("{{.Config.Port}} {{.Config.On}} {{.Tags}} {{.Config.Labels}}",
     "80 true [a:1 b:2] map[j:w k:v]"),
    ("{{.Missing}}|{{.Null}}|{{index .Null \"k\"}}|{{index .Config.Labels \"x\"}}",
     "<no value>|<nil>||"),
    ("{{range .Tags}}<{{.}}>{{end}}", "<a:1><b:2>"),
    ("{{range .Empty}}x{{else}}none{{end}}", "none"),
    ("{{range .Config.Labels}}{{.}}{{end}}", "wv"),  # in the keys' order
    ("{{if .Empty}}y{{else if .Null}}n{{else if .Tags}}t{{else}}e{{end}}", "t"),
    ("{{if .Empty}}y{{else if .Tags}}t{{end}}", "t"),
    ("{{with .Config}}{{.Port}}{{end}}{{with .Null}}n{{else}}-{{end}}", "80-"),
    ("a  {{- .Id -}}  b", "asha256:abb"),
    ('{{json .Config.Env}} {{.Tags | json}}', '["A=1"] ["a:1","b:2"]'),
    ('{{index .Tags 1}} {{len .Tags}} {{join .Tags ", "}}', "b:2 2 a:1, b:2"),
    ('{{printf "%5d|%-4s|%q|%%" .Config.Port "x" .Id}}', '   80|x   |"sha256:ab"|%'),
    ('{{if and .Tags (eq .Id "sha256:ab")}}y{{end}}', None),  # parentheses: refused
    ('{{if eq .Config.Port 80}}eighty{{end}} {{not .Empty}} {{or .Null "dflt"}}',
     "eighty true dflt"),
    ("{{/* a comment */}}ok", "ok"),
])
def test_render(template: str, out: str | None) -> None:
    if out is None:
        with pytest.raises(TemplateError):
            render(template, DATA)
    else:
        assert render(template, DATA) == out


@pytest.mark.parametrize("template", [
    "{{range .Tags}}x", "{{end}}", "{{nosuch .Id}}", "{{.Id.Sub}}", "{{index .Tags 5}}", "{{}}",
])
def test_errors(template: str) -> None:
    with pytest.raises(TemplateError):
        render(template, DATA)
