// Renders an Ollama Modelfile TEMPLATE with Go's text/template the way Ollama executes one for a chat
// (template/template.go: the "messages" path, missingkey=zero, the json function, system messages joined into
// .System and kept in .Messages). Input on stdin: {"template": ..., "cases": [{"messages": [...], "think": null}]};
// output: a JSON list of rendered prompts. Used by tests/unit/test_modelfile.py when a Go toolchain is installed.
package main

import (
	"bytes"
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

type request struct {
	Template string `json:"template"`
	Cases    []struct {
		Messages []message `json:"messages"`
		Think    *bool     `json:"think"`
	} `json:"cases"`
}

func main() {
	var req request
	if err := json.NewDecoder(os.Stdin).Decode(&req); err != nil {
		panic(err)
	}
	funcs := template.FuncMap{"json": func(v any) string { b, _ := json.Marshal(v); return string(b) }}
	tmpl := template.Must(template.New("").Option("missingkey=zero").Funcs(funcs).Parse(req.Template))
	var out []string
	for _, c := range req.Cases {
		var system []string
		var msgs []map[string]any
		for _, m := range c.Messages {
			if m.Role == "system" {
				system = append(system, m.Content)
			}
			// Ollama merges consecutive messages of one role; the checks never send those.
			msgs = append(msgs, map[string]any{"Role": m.Role, "Content": m.Content})
		}
		var b bytes.Buffer
		err := tmpl.Execute(&b, map[string]any{
			"System": strings.Join(system, "\n\n"), "Messages": msgs, "Tools": nil, "Response": "",
			"Think": c.Think != nil && *c.Think, "IsThinkSet": c.Think != nil,
		})
		if err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
