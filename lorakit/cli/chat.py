"""Talking to what lorakit trained: one reply (`generate`) or a conversation in the terminal (`chat`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from lorakit.cli.app import command
from lorakit.cli.options import JsonOpt


@command(
    "generate",
    help="Generate a reply from a run (base + adapter) or a merged model folder.\n\n"
    "Example:\n\n  lorakit generate out/sft --prompt \"What is the capital of France?\"",
)
def generate(
    path: Annotated[Path, typer.Argument(help="Run folder or merged model folder.")],
    prompt: Annotated[list[str], typer.Option("--prompt", "-p", help="User message (repeatable).")],
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 128,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, help="0 = greedy.")] = 0.0,
    model: Annotated[Optional[str], typer.Option("--model", help="Base model, if it moved since training.")] = None,
    json_out: JsonOpt = False,
) -> None:
    from lorakit.console import err, out, print_json
    from lorakit.infer import generate_reply, load_for_inference

    with err.status(f"Loading {path}..."):
        loaded, tokenizer = load_for_inference(path, model)
    results = []
    for text in prompt:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
        reply = generate_reply(loaded, tokenizer, messages, max_new_tokens, temperature)
        results.append({"prompt": text, "reply": reply})
        if not json_out:
            out.print(f"[bold]>>> {text}[/bold]", highlight=False)
            out.print(reply, markup=False, highlight=False)
    if json_out:
        print_json(results)


@command(
    "chat",
    help="Chat with a run or a merged model in the terminal (/reset clears history, /exit quits).\n\n"
    "Example:\n\n  lorakit chat out/sft",
)
def chat(
    path: Annotated[Path, typer.Argument(help="Run folder or merged model folder.")],
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 256,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0)] = 0.7,
    model: Annotated[Optional[str], typer.Option("--model", help="Base model, if it moved since training.")] = None,
) -> None:
    from lorakit.console import err, out
    from lorakit.infer import generate_reply, load_for_inference

    with err.status(f"Loading {path}..."):
        loaded, tokenizer = load_for_inference(path, model)
    history: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    err.print("Type a message; /reset clears the conversation, /exit or Ctrl-D quits.")
    while True:
        try:
            text = input("you> ")
        except EOFError:
            break
        if text.strip() in ("/exit", "/quit"):
            break
        if text.strip() == "/reset":
            history = history[:1] if system else []
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        reply = generate_reply(loaded, tokenizer, history, max_new_tokens, temperature)
        history.append({"role": "assistant", "content": reply})
        out.print(f"[bold cyan]model>[/bold cyan] {reply}", highlight=False)
