"""The Go template subset of ``inspect --format`` (soute.cli.gotemplate); what docker
prints for the same templates is checked in test_run_differential."""

from __future__ import annotations

import pytest

from soute.cli.gotemplate import TemplateError, render

DATA = {"Id": "sha256:ab", "Tags": ["a:1", "b:2"], "Empty": [], "Null": None,
        "Ports": [{"Host": "h"}], "Meta": {"LastTagTime": "0001-01-01T00:00:00Z"},
        "Config": {"Env": ["A=1"], "Labels": {"k": "v", "j": "w"}, "Port": 80, "On": True,
                   "Entrypoint": None, "Volumes": None, "ExposedPorts": {"80/tcp": {}}}}


@pytest.mark.parametrize(("template", "out"), [
    ("{{.Id}}", "sha256:ab"),
    ("{{.Config.Port}} {{.Config.On}} {{.Tags}} {{.Config.Labels}}",
     "80 true [a:1 b:2] map[j:w k:v]"),
    ("{{.Config.Labels.x}}|{{.Null}}|{{index .Null \"k\"}}|{{index .Config.Labels \"x\"}}",
     "<no value>|<nil>||"),  # a map lacks keys quietly
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
    ('{{if and .Tags (eq .Id "sha256:ab")}}y{{end}} {{(index .Tags 0)}}', "y a:1"),
    ("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}} {{$.Id}}", "j=w;k=v; sha256:ab"),
    ("{{range $i, $t := .Tags}}{{$i}}{{$t}}{{end}}{{$x := .Id}} {{$x}}", "0a:11b:2 sha256:ab"),
    ("{{with $c := .Config}}{{$c.Port}}{{end}} {{(index .Ports 0).Host}}", "80 h"),
    ("{{.Config.Entrypoint}} {{.Config.Volumes}} {{json .Config.Entrypoint}} {{.Null}}",
     "[] map[] null <nil>"),
    ("{{.Config.ExposedPorts}} {{json .Config.ExposedPorts}}", 'map[80/tcp:{}] {"80/tcp":{}}'),
    ("{{.Meta.LastTagTime}}", "0001-01-01 00:00:00 +0000 UTC"),
    ('{{title "hELLO wORLD"}} {{print 1 2 "x" 3}} {{printf "%t" true}} {{gt 3 2}}',
     "HELLO WORLD 1 2x3 true true"),
    ('{{pad "ab" 1 2}}| {{truncate "abcdef" 3}} {{"a}}b"}}', " ab  | abc a}}b"),
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
    '{{split 5 ","}}', '{{pad "x" "a" 1}}', "{{truncate .Config.Port 2}}",
    "{{.Missing}}", "{{.Config.Missing}}",  # docker's structs do not (missingkey=error)
])
def test_errors(template: str) -> None:
    with pytest.raises(TemplateError):
        render(template, DATA)
