"""Benchmark: training throughput of sftlab vs TRL's SFTTrainer, same model, data, init, batch and schedule.

    python benchmarks/throughput.py [--quick] [--repeats 3] [--json OUT] [--cases short,long] [--dtypes bf16,fp32]
    python benchmarks/throughput.py --model smollm2-135m [...]   # the real pretrained chat model

Model (default, ``--model tiny``): Llama shape (hidden 512, 8 layers, 8 heads / 4 kv heads, ffn 1408, tied embeddings, 27.8M parameters),
random weights saved once so both frameworks start from the same init; byte-level BPE vocab 8,192 trained on
``../shared/data/text``. Cases:

- ``short``: SST-2 (first 4,000 rows), prompt ``Review: {sentence}\\nSentiment:`` -> `` positive`` / `` negative``
  (+ eos), loss on the completion only;
- ``long``: alpaca_cherry_5_percent (first 300 rows) as one user / assistant chat through ChatML, loss on the
  assistant turn (its ``<|im_end|>`` included, the newline after it not).

With ``--model smollm2-135m`` (``sftlab model fetch smollm2-135m-instruct``; or ``--model DIR``, a local Hugging
Face folder) both train that model with its own tokenizer and chat template, lr 5e-5 (``--lr``), on 500 / 150 rows:
``short`` = the SST-2 review as a user turn asking for a one-word answer, the label word as the assistant turn;
``long`` = the alpaca rows as one user / assistant turn; loss on the assistant turn and its ``<|im_end|>`` for both
(TRL: ``assistant_only_loss`` with the model's template carrying ``{% generation %}`` markers). Configurations
ending in ``+lora`` train LoRA adapters (r 16, alpha 32, dropout 0.05, all linear layers) on both sides (TRL: its
``peft_config``).

Both train one epoch at max_len 512, micro-batch 8 (8 sequences, or 8 packed rows of <= 512 tokens), no
accumulation, AdamW lr 5e-4 cosine to 0, clipping 1.0, no gradient checkpointing, in fp32 or bf16 autocast.
sftlab runs its real pipeline (``build_dataset`` + ``train``) in each configuration: ``padded`` (length-grouped,
the default), ``packed`` (``data.packing``), ``packed_seg`` (+ ``train.segment_attention``); TRL runs
``padded``, ``padded_grouped`` (``train_sampling_strategy=group_by_length``) and ``packed`` (bfd, padding-free).
``padded_seq`` on both sides takes the rows in file order (sftlab: no shuffle, no length grouping; TRL:
``train_sampling_strategy=sequential``): the same 8 rows in every step, so the step losses can be compared one
by one (``first_losses``),
with ``completion_only_loss`` / ``assistant_only_loss`` (a ChatML template with ``{% generation %}`` markers)
so both train the same tokens, and no eval, saving, logging or progress bar. Each framework's best
configuration (highest median tokens/s) is compared with the other's best.

Every run is its own subprocess (peak RSS = the child's ``ru_maxrss``); runs alternate between frameworks and
configurations (order reversed every repeat) and medians over ``--repeats`` are reported. Throughput = real
(non-padding) tokens of the epoch / wall time of ``train()`` / ``trainer.train()``. MFU = model FLOPs
(6 x parameters x tokens + causal attention 6 x layers x hidden x sum(len^2)) / time / the matmul peak measured
here (2048 x 2048 ``torch.matmul`` in the run's dtype). Final loss = mean train loss of the last 10 steps;
epoch loss = mean step loss over the whole epoch (less dependent on which rows the last steps hold); held-out
loss = the trained model's token-weighted cross-entropy on the 48 rows after the training rows (trained part
only), scored after training by one function in float32 for both frameworks (outside the timed part and the
peak RSS): the figure to compare when the two frameworks order their batches differently.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SST2 = SHARED / "sentiment" / "sst2" / "train.jsonl"
ALPACA = SHARED / "instruction" / "alpaca_cherry_5_percent.jsonl"
MODEL = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4)
VOCAB = 8192
PROMPT = "Review: {sentence}\nSentiment:"
LABELS = {"0": "negative", "1": "positive"}
SFTLAB_CONFIGS = ("padded", "packed", "packed_seg", "padded_seq")
TRL_CONFIGS = ("padded", "padded_grouped", "packed", "padded_seq")
TARGETS = {"short": 2.0, "long": 1.3}  # sftlab / TRL in bf16 (issue "Fast training")
REAL_TARGETS = {"short": 3.0, "long": 3.0}  # on the real model (issue "Fast on a real model")
LORA_TARGET = 2.0  # sftlab LoRA / TRL + peft LoRA
REAL_MODELS = {"smollm2-135m": "smollm2-135m-instruct"}  # sftlab model fetch NAME
REAL_PROMPT = "Is the sentiment of this movie review positive or negative? Answer with one word.\n\nReview: {sentence}"
REAL_LABELS = {"0": "negative", "1": "positive"}
LORA = dict(r=16, alpha=32.0, dropout=0.05)  # target: all linear layers
HELDOUT = 48  # rows after the training rows, scored after training (the same scorer for both frameworks)
LAST_STEPS = 10  # final loss = mean of the last N step losses (one step's loss is noisy on tiny batches)
MARK = "THROUGHPUT_RESULT "
# A ChatML turn as SmolLM2's template writes it, and ChatML built from it (the tiny tokenizer's format);
# generation_template() marks the assistant turns for TRL's assistant_only_loss.
CHATML_TURN = "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
CHATML = (
    "{% for message in messages %}" + CHATML_TURN + "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# ------------------------------------------------------------------------------------------------ setup


def generation_template(template: str) -> str:
    """The model's ChatML-style template with ``{% generation %}`` around each assistant turn's content and
    ``<|im_end|>`` (what sftlab trains), so TRL's ``assistant_only_loss`` trains the same tokens."""
    if CHATML_TURN not in template:
        raise SystemExit("--model: only ChatML-style templates (SmolLM2's) get generation markers here")
    marked = (
        "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
        "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}" + CHATML_TURN + "{% endif %}"
    )
    return template.replace(CHATML_TURN, marked)


def real_model_dir(name: str) -> Path:
    """The fetched model (``$SFTLAB_CACHE``, else ``.cache/sftlab``) or a local folder."""
    from sftlab.model.fetch import cached_folder

    path = cached_folder(REAL_MODELS[name]) if name in REAL_MODELS else Path(name)
    if path is None or not (path / "config.json").is_file():
        raise SystemExit(f"--model {name}: not fetched or not a model folder; run: sftlab model fetch smollm2-135m-instruct")
    return path


def prepare_assets(work: Path) -> tuple[Path, Path]:
    """Tokenizer and initial weights, made once and shared by every run (same init for both frameworks)."""
    tok_dir, model_dir = work / "tokenizer", work / "model-init"
    if not (tok_dir / "tokenizer.json").is_file():
        from sftlab.model.tiny import train_bpe_tokenizer

        def texts():
            for f in sorted((SHARED / "text").iterdir()):
                with open(f, encoding="utf-8") as fh:
                    yield from fh

        train_bpe_tokenizer(texts(), vocab_size=VOCAB).save_pretrained(tok_dir)
    if not (model_dir / "config.json").is_file():
        from transformers import AutoTokenizer

        from sftlab.model.tiny import build_tiny_llama

        tok = AutoTokenizer.from_pretrained(tok_dir)
        model = build_tiny_llama(len(tok), seed=0, **MODEL)
        model.config.pad_token_id = tok.pad_token_id
        model.save_pretrained(model_dir)
    return tok_dir, model_dir


def matmul_peak(dtype_name: str, n: int = 2048, trials: int = 7) -> float:
    """Best observed GFLOP/s of an n x n matmul in ``dtype_name`` (``fp32`` / ``bf16``)."""
    import torch

    dtype = torch.bfloat16 if dtype_name == "bf16" else torch.float32
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = torch.randn(n, n, dtype=dtype, device=dev), torch.randn(n, n, dtype=dtype, device=dev)
    reps = 50 if dev == "cuda" else 3
    best = 0.0
    for _ in range(trials):
        a @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            a @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9)
    return best


def read_rows(path: Path, limit: int) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if len(rows) >= limit:
                break
            if line.strip():
                rows.append(json.loads(line))
    return rows


def chat_pairs(spec: dict, start: int, stop: int) -> list[tuple[str, str]]:
    """Rows ``[start, stop)`` of the case's source as (user, assistant) texts, as TRL's rows and the held-out
    set hold them: the real model's SST-2 question and label word, or an alpaca instruction and its output."""
    if spec["real"] and spec["case"] == "short":
        return [(REAL_PROMPT.format(sentence=r["sentence"]), REAL_LABELS[str(r["label"])])
                for r in read_rows(SST2, stop)[start:]]  # fmt: skip
    return [("\n\n".join(p for p in (r["instruction"], r.get("input") or "") if p.strip()), r["output"])
            for r in read_rows(ALPACA, stop)[start:]]  # fmt: skip


def messages(user: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]


def chat_template(spec: dict, tokenizer) -> str | None:
    """The generation-marked template a chat case trains through (the real model's own, or ChatML for the tiny
    long case); None for the tiny short case (prompt + completion)."""
    if spec["real"] or spec["case"] == "long":
        return generation_template(tokenizer.chat_template if spec["real"] else CHATML)
    return None


def heldout_examples(spec: dict, tokenizer) -> list[tuple[list[int], list[int]]]:
    """The ``HELDOUT`` rows after the training rows, encoded one way for both frameworks: (token ids, labels with
    -100 off the trained part). Chats through the generation-marked template (the assistant turn and its
    ``<|im_end|>``); the tiny short case as prompt + completion + eos. Rows over ``max_len`` are left out."""
    start, stop = spec["rows"], spec["rows"] + HELDOUT
    out = []
    template = chat_template(spec, tokenizer)
    if template is not None:
        for user, answer in chat_pairs(spec, start, stop):
            enc = tokenizer.apply_chat_template(messages(user, answer), chat_template=template, tokenize=True,
                                                return_dict=True, return_assistant_tokens_mask=True)  # fmt: skip
            ids = list(enc["input_ids"])
            out.append((ids, [t if m else -100 for t, m in zip(ids, enc["assistant_masks"], strict=True)]))
    else:
        for r in read_rows(SST2, stop)[start:]:
            prompt = tokenizer(PROMPT.format(sentence=r["sentence"]))["input_ids"]
            answer = tokenizer(" " + LABELS[str(r["label"])])["input_ids"] + [tokenizer.eos_token_id]
            out.append((prompt + answer, [-100] * len(prompt) + answer))
    return [(ids, labels) for ids, labels in out if len(ids) <= spec["max_len"]]


def heldout_loss(model, examples: list[tuple[list[int], list[int]]], batch: int = 4) -> float:
    """Token-weighted cross-entropy of ``model`` (float32, no autocast) on the held-out examples: the same scorer,
    on the same tokens, for whichever framework trained the model."""
    import torch
    import torch.nn.functional as F

    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch):
            chunk = examples[i : i + batch]
            width = max(len(ids) for ids, _ in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            labels = torch.full_like(ids, -100)
            mask = torch.zeros_like(ids)
            for j, (x, y) in enumerate(chunk):
                ids[j, : len(x)], labels[j, : len(y)], mask[j, : len(x)] = torch.tensor(x), torch.tensor(y), 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits[:, :-1].float()
            target = labels[:, 1:].to(device)
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum"))
            count += int((target != -100).sum())
    return total / count


# ------------------------------------------------------------------------------------------------ child runs


def cpu_seconds() -> float:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def common_result(spec: dict, elapsed: float, losses: list[float], cpu_s: float) -> dict:
    import resource

    import torch

    out = {
        "elapsed_s": elapsed,
        "cpu_per_wall": cpu_s / elapsed,  # ~ threads when the run had the CPUs to itself
        "steps": len(losses),
        "final_loss": statistics.fmean(losses[-LAST_STEPS:]) if losses else None,
        "epoch_loss": statistics.fmean(losses) if losses else None,  # mean step loss over the epoch
        "last_step_loss": losses[-1] if losses else None,
        "first_losses": losses[:5],  # step by step: equal batches (padded_seq) should give equal losses
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if torch.cuda.is_available():
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def load_model(spec: dict):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32, attn_implementation="sdpa")
    return model.to("cuda") if torch.cuda.is_available() else model


def run_sftlab(spec: dict) -> dict:
    """One sftlab run through the real pipeline: ``build_dataset`` -> ``train``."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    from sftlab.config import SourceConfig, load_config
    from sftlab.data.pipeline import build_dataset
    from sftlab.train.loop import train

    conf, _, extra = spec["config"].split("@")[0].partition("+")
    lora = extra == "lora"
    overrides = [
        f"lora.enabled={str(lora).lower()}", f"lora.r={LORA['r']}", f"lora.alpha={LORA['alpha']}",
        f"lora.dropout={LORA['dropout']}",
        "train.progress=false",
        f"train.compile={str(extra == 'compile').lower()}",
        "train.epochs=1",
        f"train.micro_batch_size={spec['micro_batch']}",
        "train.grad_accum=1",
        f"train.lr={spec['lr']}",
        "train.scheduler=cosine",
        "train.warmup_steps=0",
        "train.weight_decay=0.0",
        "train.max_grad_norm=1.0",
        f"train.precision={spec['dtype']}",
        "train.log_every_steps=1000000",
        f"data.max_seq_len={spec['max_len']}",
        f"data.packing={str(conf.startswith('packed')).lower()}",
        f"data.shuffle={str(conf != 'padded_seq').lower()}",  # padded_seq: file order, as TRL's sequential sampler
        f"data.group_by_length={str(conf != 'padded_seq').lower()}",
        f"train.segment_attention={str(conf == 'packed_seg').lower()}",
        "output.save_final=false",
    ]
    cfg = load_config(None, overrides)
    if spec["real"]:  # the model's own chat template; loss on the assistant turn
        if spec["case"] == "short":
            source = SourceConfig(path=str(SST2), format="classification", prompt_template=REAL_PROMPT,
                                  completion_template="{label}", label_map=REAL_LABELS, limit=spec["rows"])
        else:
            source = SourceConfig(path=str(ALPACA), format="alpaca", limit=spec["rows"])
        data = replace(cfg.data, sources=(source,), mask="completion" if spec["case"] == "short" else "assistant")
    elif spec["case"] == "short":
        source = SourceConfig(
            path=str(SST2), format="classification", prompt_template=PROMPT, label_map=LABELS, limit=spec["rows"]
        )
        data = replace(cfg.data, sources=(source,), template="plain", mask="completion")
    else:
        source = SourceConfig(path=str(ALPACA), format="alpaca", limit=spec["rows"])
        data = replace(cfg.data, sources=(source,), template="chatml", mask="assistant")
    cfg = replace(cfg, data=replace(data, cache_dir=spec["cache_dir"]))
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    dataset, _ = build_dataset(cfg.data, tokenizer, progress=False)
    model = load_model(spec)
    if lora:
        import torch

        from sftlab.model.adapters import apply_lora

        torch.manual_seed(cfg.train.seed)
        model = apply_lora(model, cfg.lora)
    lengths = list(dataset["length"])
    trained = sum(sum(1 for x in labels[1:] if x != -100) for labels in dataset["labels"])
    with tempfile.TemporaryDirectory() as out:
        t0, c0 = time.perf_counter(), cpu_seconds()
        result = train(cfg, model, tokenizer, dataset, output_dir=out)
        elapsed, cpu_s = time.perf_counter() - t0, cpu_seconds() - c0
    assert result.tokens == sum(lengths), (result.tokens, sum(lengths))
    common = common_result(spec, elapsed, result.losses, cpu_s)  # peak RSS of the training, before the scoring
    return {
        **common,
        "heldout_loss": heldout_loss(model, heldout_examples(spec, tokenizer)),
        "tokens": result.tokens,
        "trained_tokens": result.trained_tokens,
        "dataset_trained_tokens": trained,
        "sum_len_sq": sum(n * n for n in lengths),
        "params": sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n),  # the base's
        "layers": model.config.num_hidden_layers,
        "hidden": model.config.hidden_size,
    }



def n_tokens(tokenizer, messages: list[dict]) -> int:
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"])


def run_trl(spec: dict) -> dict:
    """One TRL ``SFTTrainer`` run on the same rows, model init, batch and schedule."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    conf, _, extra = spec["config"].split("@")[0].partition("+")
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    heldout = heldout_examples(spec, tokenizer)  # scored after training
    template = chat_template(spec, tokenizer)
    if template is not None:
        tokenizer.chat_template = template
        rows = [{"messages": messages(u, a)} for u, a in chat_pairs(spec, 0, spec["rows"])]
        # sftlab does not train a reply cut by truncation (such a record has no trained token left and is
        # removed); TRL would train its first part. Leave those rows out here too, so both train the same tokens.
        rows = [r for r in rows if n_tokens(tokenizer, r["messages"]) <= spec["max_len"]]
        loss_kw = {"assistant_only_loss": True}
    else:
        rows = [
            {"prompt": PROMPT.format(sentence=r["sentence"]), "completion": " " + LABELS[str(r["label"])]}
            for r in read_rows(SST2, spec["rows"])
        ]
        loss_kw = {"completion_only_loss": True}
    model = load_model(spec)
    args = SFTConfig(
        output_dir=spec["out_dir"],
        num_train_epochs=1,
        per_device_train_batch_size=spec["micro_batch"],
        gradient_accumulation_steps=1,
        learning_rate=spec["lr"],
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=spec["dtype"] == "bf16",
        use_cpu=not torch.cuda.is_available(),
        max_length=spec["max_len"],
        packing=conf == "packed",
        packing_strategy="bfd",
        train_sampling_strategy={"padded_grouped": "group_by_length", "padded_seq": "sequential"}.get(conf, "random"),
        gradient_checkpointing=False,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=42,
        **loss_kw,
    )
    peft_config = None
    if extra == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                 target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft_config)
    losses, tokens, trained = [], [0], [0]
    step = trainer.training_step

    def recording_step(model, inputs, num_items_in_batch=None):
        if "attention_mask" in inputs:
            tokens[0] += int(inputs["attention_mask"].sum())
        else:  # padding-free: one row of real tokens
            tokens[0] += int(inputs["input_ids"].numel())
        trained[0] += int(num_items_in_batch) if num_items_in_batch is not None else 0
        loss = step(model, inputs, num_items_in_batch)
        losses.append(float(loss))
        return loss

    trainer.training_step = recording_step
    t0, c0 = time.perf_counter(), cpu_seconds()
    trainer.train()
    elapsed, cpu_s = time.perf_counter() - t0, cpu_seconds() - c0
    common = common_result(spec, elapsed, losses, cpu_s)  # peak RSS of the training, before the scoring
    return {
        **common,
        "heldout_loss": heldout_loss(trainer.model, heldout),
        "tokens": tokens[0],
        "trained_tokens": trained[0],
        "optim": str(args.optim),
    }


def child(spec: dict) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    result = run_sftlab(spec) if spec["framework"] == "sftlab" else run_trl(spec)
    print(MARK + json.dumps(result), flush=True)


# --ignore-niced: time of processes at a positive nice level does not count as other work (they yield the CPUs
# to the benchmark's runs, which run at the default level)
COUNT_NICED = True


def _stat_busy_s() -> float:
    """CPU-seconds all processes have used since boot (Linux ``/proc/stat``; busy = all but idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v) - v[3] - v[4] - (0 if COUNT_NICED else v[1])) / os.sysconf("SC_CLK_TCK")


def cpu_busy(seconds: float = 2.0) -> float:
    """Share of all CPUs busy over ``seconds`` (0.0 where ``/proc/stat`` cannot be read)."""
    try:
        b0 = _stat_busy_s()
        time.sleep(seconds)
        return (_stat_busy_s() - b0) / seconds / (os.cpu_count() or 1)
    except OSError:
        return 0.0


def wait_idle(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to ``max_wait`` s) until other work leaves the CPUs mostly idle; returns the last busy share."""
    deadline = time.monotonic() + max_wait
    busy = cpu_busy()
    while busy > threshold and time.monotonic() < deadline:
        time.sleep(10)
        busy = cpu_busy()
    return busy


def launch(spec: dict, timeout: float) -> dict:
    """Run one configuration in a fresh interpreter; its stdout's marked line is the result."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    import resource

    def usage():
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        try:
            busy = _stat_busy_s()
        except OSError:
            busy = float("nan")
        return time.perf_counter(), r.ru_utime + r.ru_stime, busy

    t0, c0, b0 = usage()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    t1, c1, b1 = usage()
    for line in reversed(p.stdout.splitlines()):
        if line.startswith(MARK):
            out = json.loads(line[len(MARK) :])
            # CPU cores that other processes kept busy while this run lasted: > 0 means it had to share
            out["other_cpu"] = max(0.0, (b1 - b0) - (c1 - c0)) / (t1 - t0)
            return out
    raise RuntimeError(f"{spec['framework']} {spec['config']} failed (exit {p.returncode}):\n{p.stderr[-3000:]}")


# ------------------------------------------------------------------------------------------------ driver


def model_flops(params: int, tokens: int, sum_len_sq: int, layers: int, hidden: int) -> float:
    """Training FLOPs: 6 x params x tokens (forward + backward of every matmul, LM head included) plus causal
    attention scores and mixing, 2 x 2 x hidden x len^2 / 2 per layer forward, x3 with backward. The same count
    for LoRA runs (their backward still computes the input gradients of every frozen matmul, the weight gradients
    not: MFU is then a throughput ratio, not a share of work done)."""
    return 6 * params * tokens + 6 * layers * hidden * sum_len_sq


def summarise(runs: list[dict]) -> dict:
    tps = [r["tokens"] / r["elapsed_s"] for r in runs]
    return {
        "tokens_per_s": statistics.median(tps),
        "tokens_per_s_runs": [round(x, 1) for x in tps],
        "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs),
        "final_loss": statistics.median(r["final_loss"] for r in runs),
        "epoch_loss": statistics.median(r["epoch_loss"] for r in runs),
        "heldout_loss": statistics.median(r["heldout_loss"] for r in runs),
        "tokens": runs[0]["tokens"],
        "trained_tokens": runs[0]["trained_tokens"],
        "steps": runs[0]["steps"],
        "first_losses": runs[0].get("first_losses"),
        "runs": [
            {k: r.get(k) for k in ("elapsed_s", "peak_rss_mb", "final_loss", "heldout_loss", "cpu_per_wall",
                                   "other_cpu", "attempts")}  # fmt: skip
            for r in runs
        ],
        **({"peak_gpu_mb": statistics.median(r["peak_gpu_mb"] for r in runs)} if "peak_gpu_mb" in runs[0] else {}),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="tiny (the random 27.8M Llama shape), smollm2-135m (the fetched "
                   "SmolLM2-135M-Instruct) or a local Hugging Face model folder")
    p.add_argument("--quick", action="store_true", help="fewer rows (~1 min a run), bf16 only, 1 repeat")
    p.add_argument("--repeats", type=int, default=None, help="alternated runs per configuration (default 3; 1 quick)")
    p.add_argument("--json", help="write one object per case and dtype to this file")
    p.add_argument("--cases", default="short,long")
    p.add_argument("--dtypes", default=None, help="bf16,fp32 (default; bf16 with --quick)")
    p.add_argument(
        "--sftlab-configs",
        default=",".join(SFTLAB_CONFIGS),
        help=f"of {', '.join(SFTLAB_CONFIGS)}; NAME@N: micro-batch N instead of --micro-batch; NAME+compile: "
        "train.compile (the compile time counts in tokens/s)",
    )
    p.add_argument("--trl-configs", default=",".join(TRL_CONFIGS), help=f"of {', '.join(TRL_CONFIGS)}; NAME@N too")
    p.add_argument("--short-rows", type=int, default=None, help="SST-2 rows (default 4000, real model 500; 1000 / 200 quick)")
    p.add_argument("--long-rows", type=int, default=None, help="alpaca rows (default 300, real model 150; 80 / 60 quick)")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 5e-4; real model 5e-5)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "sftlab-throughput"))
    p.add_argument("--timeout", type=float, default=3600, help="seconds per run")
    p.add_argument(
        "--wait-idle", type=float, default=600, help="before each run, wait up to this many s for idle CPUs (0: off)"
    )
    p.add_argument(
        "--max-other-cpu",
        type=float,
        default=0.25,
        help="a run during which other processes kept more than this many CPU cores busy (on average) had to "
        "share the machine: it is run again, up to --retries times",
    )
    p.add_argument("--retries", type=int, default=2)
    p.add_argument(
        "--ignore-niced",
        action="store_true",
        help="CPU time of processes at a positive nice level (which yield to the runs) is not counted as other work",
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    global COUNT_NICED
    COUNT_NICED = not args.ignore_niced

    repeats = args.repeats or (1 if args.quick else 3)
    dtypes = (args.dtypes or ("bf16" if args.quick else "bf16,fp32")).split(",")
    real = args.model != "tiny"
    rows = {
        "short": args.short_rows or ((200 if args.quick else 500) if real else (1000 if args.quick else 4000)),
        "long": args.long_rows or ((60 if args.quick else 150) if real else (80 if args.quick else 300)),
    }
    lr = args.lr or (5e-5 if real else 5e-4)
    configs = [("sftlab", c) for c in args.sftlab_configs.split(",") if c] + [
        ("trl", c) for c in args.trl_configs.split(",") if c
    ]
    # interleave the frameworks: sftlab, trl, sftlab, trl, ...
    sl, tr = [c for c in configs if c[0] == "sftlab"], [c for c in configs if c[0] == "trl"]
    order = [c for pair in zip(sl, tr) for c in pair] + sl[len(tr) :] + tr[len(sl) :]

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tok_dir, model_dir = (real_model_dir(args.model),) * 2 if real else prepare_assets(work)
    peaks = {d: matmul_peak(d) for d in dtypes}
    import torch

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}; matmul peak "
        + ", ".join(f"{d} {v:,.0f} GFLOP/s" for d, v in peaks.items())
    )
    print(f"model {model_dir.name}, repeats {repeats}, micro-batch {args.micro_batch}, max_len {args.max_len}, "
          f"lr {lr}, rows {rows}", flush=True)

    results = []
    for case in args.cases.split(","):
        for dtype in dtypes:
            runs: dict[tuple[str, str], list[dict]] = {c: [] for c in order}
            for rep in range(repeats):
                for fw, conf in order if rep % 2 == 0 else list(reversed(order)):
                    spec = dict(
                        framework=fw, config=conf, case=case, dtype=dtype, rows=rows[case], lr=lr, real=real,
                        micro_batch=int(conf.split("@")[1]) if "@" in conf else args.micro_batch,
                        max_len=args.max_len, tokenizer=str(tok_dir),
                        model=str(model_dir), cache_dir=str(work / "sftlab-cache"), out_dir=str(work / "trl-out"),
                    )  # fmt: skip
                    for attempt in range(args.retries + 1):
                        busy = wait_idle(args.wait_idle) if args.wait_idle > 0 else None
                        r = launch(spec, args.timeout)
                        r["cpu_busy_before"] = busy
                        if not r["other_cpu"] > args.max_other_cpu or attempt == args.retries:
                            break
                        print(
                            f"  {case:5} {dtype} rep {rep + 1} {fw:6} {conf:14} contended (other work used "
                            f"{r['other_cpu']:.2f} cores; {r['tokens'] / r['elapsed_s']:,.0f} tok/s): run again",
                            flush=True,
                        )
                    r["attempts"] = attempt + 1
                    runs[(fw, conf)].append(r)
                    print(
                        f"  {case:5} {dtype} rep {rep + 1} {fw:6} {conf:14} {r['tokens'] / r['elapsed_s']:8,.0f} tok/s "
                        f"{r['elapsed_s']:6.1f} s  rss {r['peak_rss_mb']:6,.0f} MB  loss {r['final_loss']:.4f}  "
                        f"held-out {r['heldout_loss']:.4f}  tokens {r['tokens']:,} trained {r['trained_tokens']:,} steps {r['steps']} "
                        f"cpu/wall {r['cpu_per_wall']:.2f} other {r['other_cpu']:.2f}",
                        flush=True,
                    )
            # full fine-tuning and LoRA are compared separately: each side's best of its own kind
            for kind in ("full", "lora"):
                mine = {c: rs for c, rs in runs.items() if ("+lora" in c[1]) == (kind == "lora")}
                if any(fw == "sftlab" for fw, _ in mine):
                    name = case if kind == "full" else f"{case}+lora"
                    targets = {**(REAL_TARGETS if real else TARGETS), f"{case}+lora": LORA_TARGET}
                    results.append(report_case(name, dtype, mine, peaks[dtype], targets))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


def report_case(case: str, dtype: str, runs: dict, peak_gflops: float, targets: dict) -> dict:
    summary = {f"{fw}:{conf}": summarise(rs) for (fw, conf), rs in runs.items()}
    sft_runs = next(rs for (fw, _), rs in runs.items() if fw == "sftlab")
    params, sum_len_sq = sft_runs[0]["params"], sft_runs[0]["sum_len_sq"]
    shape = sft_runs[0].get("layers", MODEL["num_hidden_layers"]), sft_runs[0].get("hidden", MODEL["hidden_size"])

    def mfu(s: dict) -> float:
        flops = model_flops(params, s["tokens"], sum_len_sq, *shape)
        return flops / (s["tokens"] / s["tokens_per_s"]) / (peak_gflops * 1e9)

    for s in summary.values():
        s["mfu"] = mfu(s)
    best = {}
    for fw in ("sftlab", "trl"):
        keys = [k for k in summary if k.startswith(fw + ":")]
        best[fw] = max(keys, key=lambda k: summary[k]["tokens_per_s"]) if keys else None
    s, t = summary[best["sftlab"]], summary[best["trl"]] if best["trl"] else None
    out = {
        "case": case,
        "dtype": dtype,
        "sftlab_config": best["sftlab"].split(":")[1],
        "trl_config": best["trl"].split(":")[1] if t else None,
        "sftlab_tokens_per_s": s["tokens_per_s"],
        "trl_tokens_per_s": t["tokens_per_s"] if t else None,
        "ratio": s["tokens_per_s"] / t["tokens_per_s"] if t else None,
        "target_ratio": targets[case] if dtype == "bf16" else None,
        "sftlab_peak_rss_mb": s["peak_rss_mb"],
        "trl_peak_rss_mb": t["peak_rss_mb"] if t else None,
        "sftlab_final_loss": s["final_loss"],
        "trl_final_loss": t["final_loss"] if t else None,
        "sftlab_heldout_loss": s["heldout_loss"],
        "trl_heldout_loss": t["heldout_loss"] if t else None,
        "mfu": s["mfu"],
        "trl_mfu": t["mfu"] if t else None,
        "matmul_peak_gflops": peak_gflops,
        "configs": summary,
    }
    if "peak_gpu_mb" in s:
        out["sftlab_peak_gpu_mb"], out["trl_peak_gpu_mb"] = s["peak_gpu_mb"], t["peak_gpu_mb"] if t else None
    if t:
        # the fastest sftlab configuration that needs no more memory than TRL's best
        fits = [k for k in summary if k.startswith("sftlab:") and summary[k]["peak_rss_mb"] <= t["peak_rss_mb"]]
        if fits:
            k = max(fits, key=lambda k: summary[k]["tokens_per_s"])
            out["within_memory"] = {
                "sftlab_config": k.split(":")[1],
                "sftlab_tokens_per_s": summary[k]["tokens_per_s"],
                "ratio": summary[k]["tokens_per_s"] / t["tokens_per_s"],
                "sftlab_peak_rss_mb": summary[k]["peak_rss_mb"],
                "sftlab_final_loss": summary[k]["final_loss"],
                "sftlab_heldout_loss": summary[k]["heldout_loss"],
            }
    out["matched"] = matched_pairs(summary)
    print(f"\n== {case} / {dtype}: tokens {s['tokens']:,} real, {s['trained_tokens']:,} trained (sftlab)")
    print(f"   {'config':22} {'tok/s':>8} {'runs':>26} {'RSS MB':>8} {'loss':>7} {'epoch':>7} {'held':>7} {'MFU':>6} "
          f"{'steps':>5} trained")
    for k, v in summary.items():
        mark = " *" if k in best.values() else ""
        print(
            f"   {k:22} {v['tokens_per_s']:8,.0f} {str(v['tokens_per_s_runs']):>26} {v['peak_rss_mb']:8,.0f} "
            f"{v['final_loss']:7.4f} {v['epoch_loss']:7.4f} {v['heldout_loss']:7.4f} {v['mfu']:6.1%} {v['steps']:5} {v['trained_tokens']:,}{mark}"
        )
    if t:
        target = f" (target >= {targets[case]}x)" if dtype == "bf16" else ""
        print(
            f"   best: sftlab {best['sftlab']} {s['tokens_per_s']:,.0f} tok/s vs TRL {best['trl']} "
            f"{t['tokens_per_s']:,.0f} tok/s = {out['ratio']:.2f}x{target}; RSS {s['peak_rss_mb']:,.0f} vs "
            f"{t['peak_rss_mb']:,.0f} MB; loss {s['final_loss']:.4f} vs {t['final_loss']:.4f}, held-out "
            f"{s['heldout_loss']:.4f} vs {t['heldout_loss']:.4f}; MFU {s['mfu']:.1%} vs "
            f"{t['mfu']:.1%} of {peak_gflops:,.0f} GFLOP/s",
            flush=True,
        )
        w = out.get("within_memory")
        if w:
            print(
                f"   best within TRL's memory: sftlab {w['sftlab_config']} {w['sftlab_tokens_per_s']:,.0f} tok/s = "
                f"{w['ratio']:.2f}x, RSS {w['sftlab_peak_rss_mb']:,.0f} MB, loss {w['sftlab_final_loss']:.4f}, held-out "
                f"{w['sftlab_heldout_loss']:.4f}"
            )
    for m in out["matched"]:
        print(
            f"   same batching: sftlab {m['sftlab_config']} / TRL {m['trl_config']} = {m['ratio']:.2f}x; RSS "
            f"{m['sftlab_peak_rss_mb']:,.0f} vs {m['trl_peak_rss_mb']:,.0f} MB; loss {m['sftlab_final_loss']:.4f} vs "
            f"{m['trl_final_loss']:.4f}; held-out {m['sftlab_heldout_loss']:.4f} vs {m['trl_heldout_loss']:.4f} "
            f"({m['sftlab_heldout_loss'] / m['trl_heldout_loss'] - 1:+.1%})"
        )
        if m["sftlab_config"].startswith("padded_seq") and m["sftlab_first_losses"] and m["trl_first_losses"]:
            print("   the same rows in each step, step losses: sftlab "
                  + " ".join(f"{x:.4f}" for x in m["sftlab_first_losses"]) + " / TRL "
                  + " ".join(f"{x:.4f}" for x in m["trl_first_losses"]))
    print(flush=True)
    return out


def matched_pairs(summary: dict) -> list[dict]:
    """Each sftlab configuration against TRL's fastest one with the same batching (same sequences per step):
    padded <-> padded / padded_grouped, packed / packed_seg <-> packed, at the same micro-batch."""

    def batching(key: str) -> str:
        name, _, micro = key.split(":")[1].partition("@")
        base = name.partition("+")[0]
        kind = base if base == "padded_seq" else "padded" if base.startswith("padded") else "packed"
        kind += "+lora" if "+lora" in name else ""
        return kind + "@" + micro  # "+compile" counts as its base

    out = []
    for k, v in summary.items():
        if not k.startswith("sftlab:"):
            continue
        same = [j for j in summary if j.startswith("trl:") and batching(j) == batching(k)]
        if not same:
            continue
        j = max(same, key=lambda j: summary[j]["tokens_per_s"])
        w = summary[j]
        out.append(
            {
                "sftlab_config": k.split(":")[1],
                "trl_config": j.split(":")[1],
                "ratio": v["tokens_per_s"] / w["tokens_per_s"],
                "sftlab_peak_rss_mb": v["peak_rss_mb"],
                "trl_peak_rss_mb": w["peak_rss_mb"],
                "sftlab_final_loss": v["final_loss"],
                "trl_final_loss": w["final_loss"],
                "sftlab_heldout_loss": v["heldout_loss"],
                "trl_heldout_loss": w["heldout_loss"],
                "sftlab_first_losses": v["first_losses"],
                "trl_first_losses": w["first_losses"],
            }
        )
    return out


if __name__ == "__main__":
    main()
