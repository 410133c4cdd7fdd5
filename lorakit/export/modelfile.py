"""Which chat-template family a Jinja template is, and the Ollama Modelfile that reproduces it."""

from __future__ import annotations

from lorakit.errors import ModelError

# (family, markers that must all appear in the Jinja template)
FAMILIES = [
    ("chatml", ("<|im_start|>", "<|im_end|>")),
    ("llama3", ("<|start_header_id|>", "<|eot_id|>")),
    ("gemma", ("<start_of_turn>", "<end_of_turn>")),
    ("phi3", ("<|user|>", "<|end|>")),
    ("mistral", ("[INST]", "[/INST]")),
]

OLLAMA_TEMPLATES = {
    "chatml": (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
        ["<|im_end|>", "<|im_start|>"]),
    "llama3": (
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ["<|eot_id|>", "<|start_header_id|>"]),
    "gemma": (
        "{{- range .Messages }}<start_of_turn>{{ if eq .Role \"assistant\" }}model{{ else }}{{ .Role }}{{ end }}\n"
        "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n",
        ["<end_of_turn>", "<start_of_turn>"]),
    "phi3": (
        "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n",
        ["<|end|>", "<|user|>", "<|assistant|>"]),
    "mistral": (
        "{{- range .Messages }}{{ if eq .Role \"user\" }}[INST] {{ .Content }} [/INST]{{ else if eq .Role "
        "\"assistant\" }}{{ .Content }}</s>{{ end }}{{ end }}",
        ["[INST]", "</s>"]),
}


def template_family(chat_template: str | None) -> str:
    if not chat_template:
        raise ModelError("the model has no chat template, so no Ollama TEMPLATE can be written",
                         hint="set model.chat_template in the training recipe, or pass --no-modelfile")
    for family, markers in FAMILIES:
        if all(marker in chat_template for marker in markers):
            return family
    raise ModelError("the chat template is not one of the families lorakit can translate for Ollama "
                     f"({', '.join(f for f, _ in FAMILIES)})",
                     hint="write the Modelfile TEMPLATE by hand, or pass --no-modelfile")


def modelfile(gguf_name: str, chat_template: str | None, system_prompt: str | None = None) -> tuple[str, str]:
    """The Modelfile text and the family it was written for."""
    family = template_family(chat_template)
    template, stops = OLLAMA_TEMPLATES[family]
    # Ollama puts SYSTEM (and a chat's system turn) into .Messages, so the templates only walk .Messages
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{template}"""']
    lines += [f'PARAMETER stop "{stop}"' for stop in stops]
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    return "\n".join(lines) + "\n", family
