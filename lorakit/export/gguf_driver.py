"""Runs llama.cpp's converter on one model folder, with lorakit's tokenizer part. Subprocess only.

    python -m lorakit.export.gguf_driver FOLDER OUTFILE OUTTYPE MODEL_NAME RESULT_JSON EMPTY_DIR

lorakit.export.gguf_converter starts it with the converter's folder and its in-tree gguf-py first on PYTHONPATH, so
`gguf` here is the converter's own (never imported into lorakit's process). The converter's model class does the
tensors and hyper-parameters; its `set_vocab` is replaced by lorakit.export.gguf_vocab.add_vocab, which writes the
tokenizer as training saw it (pre-tokenizer named from the tokenizer's structure, the BOS flag, the chat template's
end-of-turn token, SentencePiece scores without tokenizer.model). Where lorakit cannot name a byte-level BPE
pre-tokenizer, the converter's own table of released tokenizers (a hash of a probe text's ids) is asked; tokenizers
that are not BPE keep the converter's own code. The model card is not read (EMPTY_DIR stands in for it): a merged
folder's card names local paths the converter would turn into huggingface.co URLs.

Writes RESULT_JSON: {"arch", "vocab"} or {"error", "hint"} (a LorakitError, e.g. an unnameable
pre-tokenizer); the converter's own failures end the process non-zero with its log on stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from lorakit.errors import LorakitError
from lorakit.export.gguf_vocab import add_vocab, is_bpe


def _with_lorakit_vocab(model_class, folder: Path, decided: dict):
    def set_vocab(self):
        tokenizer_json = json.loads((folder / "tokenizer.json").read_text()) if (folder / "tokenizer.json").is_file() \
            else {}
        if not is_bpe(tokenizer_json):
            model_class.set_vocab(self)  # WordPiece, Unigram...: the converter's own reading of the folder
            decided.update(tokenizer="converter's own", pre=None)
            return
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))

        def released_pre() -> str | None:
            try:
                return self.get_vocab_base_pre(tokenizer)
            except NotImplementedError:
                return None

        hparams = dict(self.hparams)
        hparams.setdefault("vocab_size", len(tokenizer))
        decided.update(add_vocab(self.gguf_writer, folder, hparams, tokenizer, released_pre=released_pre))

    return type(f"Lorakit{model_class.__name__}", (model_class,),
                {"model_arch": model_class.model_arch, "set_vocab": set_vocab})


def main(argv: list[str]) -> int:
    folder, outfile, outtype, model_name, result_file, no_card = argv
    folder, outfile, result = Path(folder), Path(outfile), {}
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    import gguf
    import torch
    from conversion import ModelBase, ModelType, get_model_architecture, get_model_class

    ftypes = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    decided: dict = {}
    try:
        with torch.inference_mode():
            hparams = ModelBase.load_hparams(folder, False)
            model_class = _with_lorakit_vocab(get_model_class(get_model_architecture(hparams, ModelType.TEXT)),
                                              folder, decided)
            model = model_class(folder, ftypes[outtype], outfile, model_name=model_name)
            model.dir_model_card = Path(no_card)
            model.write()
        result = {"arch": gguf.MODEL_ARCH_NAMES[model_class.model_arch], "vocab": decided}
    except LorakitError as exc:
        result = {"error": exc.message, "hint": exc.hint}
        outfile.unlink(missing_ok=True)
    Path(result_file).write_text(json.dumps(result))
    return 2 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
