"""`python -m bench.tiny_gpt --out DIR`: a small real GPT-2-style language model, trained offline.

No pretrained causal LM is reachable here, so this trains one on the real English text in
``../shared/data`` (read there, never copied into the repository): the training splits of SST-2,
TREC, UD English EWT (dev) and STS-B (dev) are the training text; their held-out splits (SST-2
dev, TREC test, UD EWT test, STS-B test) are ``heldout.txt``, what perplexity is measured on.
A byte-level BPE tokenizer (8,192 tokens, ``<|endoftext|>`` between texts) is trained on the
training text, then a GPT-2 (6 layers, width 384, 6 heads, 1,024 positions: ~14 M parameters) for
``--minutes`` of wall time on packed 128-token sequences (AdamW, warm-up then cosine decay).
Written: ``DIR/model`` (an ordinary transformers folder with its tokenizer), ``DIR/train.txt``,
``DIR/heldout.txt``, ``DIR/prompts.jsonl`` (32 held-out openings, the recipe's greedy-generation
prompts) and ``DIR/gpt.json`` (what was trained, the held-out loss), which also marks
a finished folder that a second call reuses.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DONE = "gpt.json"
VOCAB, SEQ = 8192, 128


def _sst2(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [line.rsplit("\t", 1)[0].strip() for line in lines if line.strip()]


def _trec(path: Path) -> list[str]:
    return [line.split(" ", 1)[1].strip() for line in path.read_text(encoding="latin-1").splitlines() if " " in line]


def _ud(path: Path) -> list[str]:
    return [
        line[len("# text = ") :].strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.startswith("# text = ")
    ]


def _stsb(path: Path) -> list[str]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.rstrip("\n").split("\t")[:7]
        if len(fields) == 7:
            out += [fields[5].strip(), fields[6].strip()]
    return out


def write_text(out: Path, data: Path = DATA) -> tuple[Path, Path]:
    """train.txt and heldout.txt (a text per line, duplicates dropped) from the shared data."""
    if not data.is_dir():
        sys.exit(f"bench.tiny_gpt: {data} not found (the workplace's shared data; a user's clone has none)")
    train = (
        _sst2(data / "sst2/train.tsv")
        + _trec(data / "trec/train_5500.label")
        + _ud(data / "ud_ewt/en_ewt-ud-dev.conllu")
        + _stsb(data / "stsb/sts-dev.csv")
    )
    held = (
        _sst2(data / "sst2/dev.tsv")
        + _trec(data / "trec/TREC_10.label")
        + _ud(data / "ud_ewt/en_ewt-ud-test.conllu")
        + _stsb(data / "stsb/sts-test.csv")
    )
    seen: set[str] = set()
    paths = []
    for name, texts in (("train.txt", train), ("heldout.txt", held)):
        kept = [t for t in texts if t and t not in seen and not seen.add(t)]
        rng = np.random.default_rng(0)  # the sources interleaved, so every window mixes them
        kept = [kept[i] for i in rng.permutation(len(kept))]
        (out / name).write_text("\n".join(kept) + "\n", encoding="utf-8")
        paths.append(out / name)
    return paths[0], paths[1]


def train_tokenizer(train: Path, folder: Path):
    """A byte-level BPE of VOCAB tokens on the training text, saved as a GPT-2 tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Tokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train([str(train)], vocab_size=VOCAB, min_frequency=2, special_tokens=["<|endoftext|>"])
    folder.mkdir(parents=True, exist_ok=True)
    bpe.save_model(str(folder))
    tok = GPT2Tokenizer(
        vocab=str(folder / "vocab.json"),
        merges=str(folder / "merges.txt"),
        eos_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tok.model_max_length = 1024
    tok.save_pretrained(str(folder))
    return tok


def _stream(path: Path, tok) -> np.ndarray:
    from modelpress.modalities.causal_text import token_stream

    return token_stream(path.read_text(encoding="utf-8").splitlines(), tok)


def train(out: Path, *, minutes: float, seed: int = 0, batch: int = 16, lr: float = 1e-3) -> dict:
    import torch
    from tqdm import tqdm
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    train_txt, held_txt = write_text(out)
    folder = out / "model"
    tok = train_tokenizer(train_txt, folder)
    stream, held = _stream(train_txt, tok), _stream(held_txt, tok)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_positions=1024,
        n_embd=384,
        n_layer=6,
        n_head=6,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    model = GPT2LMHeadModel(cfg)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    n_seq = len(stream) // SEQ
    data = torch.from_numpy(stream[: n_seq * SEQ].reshape(n_seq, SEQ))
    budget = minutes * 60.0
    warmup = 50
    rng = np.random.default_rng(seed)
    start, step, losses = time.perf_counter(), 0, []
    bar = tqdm(desc="training the GPT", unit="step", file=sys.stderr)
    model.train()
    while (elapsed := time.perf_counter() - start) < budget:
        # the schedule follows wall time: warm-up steps, then cosine decay to 10 % at the budget's end
        frac = min(elapsed / budget, 1.0)
        scale = min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr * scale
        ids = data[rng.integers(0, n_seq, batch)]
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    bar.close()
    model.eval()
    with torch.no_grad():  # held-out loss on whole 128-token sequences (the bench's perplexity is strided)
        n_held = min(len(held) // SEQ, 200)
        held_ids = torch.from_numpy(held[: n_held * SEQ].reshape(n_held, SEQ))
        held_loss = float(
            np.mean(
                [
                    float(model(input_ids=held_ids[i : i + 8], labels=held_ids[i : i + 8]).loss)
                    for i in range(0, n_held, 8)
                ]
            )
        )
    model.save_pretrained(str(folder))
    info = {
        "parameters": params,
        "steps": step,
        "tokens_seen": step * batch * SEQ,
        "train_tokens": int(len(stream)),
        "heldout_tokens": int(len(held)),
        "minutes": round((time.perf_counter() - start) / 60, 2),
        "final_train_loss": round(float(np.mean(losses[-20:])), 4),
        "heldout_loss": round(held_loss, 4),
        "heldout_perplexity_seq128": round(math.exp(held_loss), 2),
        "vocab": len(tok),
        "config": {k: getattr(cfg, k) for k in ("n_embd", "n_layer", "n_head", "n_positions")},
    }
    (out / DONE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def write_prompts(heldout: Path, out: Path, *, count: int = 32, words: int = 6) -> Path:
    """``prompts.jsonl``: the first ``words`` words of the first ``count`` held-out texts that have
    at least twice as many (the recipe's greedy-generation prompts)."""
    texts = [t.split() for t in heldout.read_text(encoding="utf-8").splitlines()]
    picked = [" ".join(t[:words]) for t in texts if len(t) >= 2 * words][:count]
    path = out / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in picked), encoding="utf-8")
    return path


def prepare(out: Path, *, minutes: float = 20.0) -> dict:
    """The trained GPT in ``out`` (trained now unless a finished one is there), and its prompts."""
    out.mkdir(parents=True, exist_ok=True)
    info = (
        json.loads((out / DONE).read_text(encoding="utf-8")) if (out / DONE).is_file() else train(out, minutes=minutes)
    )
    write_prompts(out / "heldout.txt", out)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tiny_gpt", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts/gpt"))
    parser.add_argument("--minutes", type=float, default=20.0, help="wall time of training")
    args = parser.parse_args(argv)
    print(json.dumps(prepare(args.out, minutes=args.minutes), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
