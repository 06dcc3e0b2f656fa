"""A few real steps on the bundled SmolLM2-135M-Instruct (the default model users get)."""
import json
import math
from pathlib import Path

import pytest

from core.config import UnlearnConfig
from core.runs import RunDir
from core.tofu import load_records
from core.trainer import train

pytestmark = pytest.mark.bundled
ASSETS = Path(__file__).resolve().parents[1] / "assets"


# bf16 rounds a batch's summed answer NLL differently with another batch shape (the cache is scored in other
# batches than training sees), and (2/β)·log 2 moves by about as much as the two sums differ. A bf16 logit near
# 20 has a step of 0.125; where another accumulation order crosses a rounding boundary the answer token's
# log-probability moves by up to that, so ~50 summed answer tokens differ by a few tenths (CI's AVX2 machine,
# which emulates bf16: 0.24; AMX: ~0.07). 0.5 still fails a cache scored on the wrong answers: they differ by
# tens of nats.
@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-3), ("bfloat16", 0.5)])
def test_npo_rt_steps_on_the_bundled_model(tmp_path, bundled_dir, dtype, tolerance):
    # 8 of forget01's 40 questions: the cache and the knowledge check score every forget example, and a CPU
    # without bf16 units (CI's AVX2 machine) emulates bf16 ~80x slower: there this test took 9 min with 40,
    # 7.7 min with 8 (the steps themselves dominate)
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps(r) + "\n" for r in load_records("forget01")[:8]))
    config = UnlearnConfig(model="bundled", method="npo_rt", forget=str(forget), retain="tofu:retain99",
                           out=str(tmp_path / "run"), max_steps=3, batch_size=2, max_length=160, lr=1e-5,
                           eval_examples=4, save_steps=0, device="cpu", dtype=dtype)
    result = train(config, show_progress=False, log=lambda m: None)
    rows = RunDir(result.run_dir).metrics()
    # At step 1 the model is the original, so NPO's term is exactly (2/β)·log 2: the cached reference NLL
    # agrees with the live model on every forget example in the batch.
    assert rows[0]["loss_forget_npo"] == pytest.approx(2 / 0.1 * math.log(2), abs=tolerance)
    before = result.summary["before"]
    assert 0.5 < before["forget_nll"] < 6 and 0.5 < before["retain_nll"] < 6   # a real LM, not noise
    assert result.summary["after"]["forget_nll"] > before["forget_nll"]
    assert (RunDir(result.run_dir).model_dir / "model.safetensors").stat().st_size > 400e6


def test_lora_step_on_the_bundled_model(tmp_path, bundled_dir):
    config = UnlearnConfig(model="bundled", method="npo", forget="tofu:forget01", out=str(tmp_path / "run"),
                           max_steps=2, batch_size=2, max_length=160, lora=True, eval_examples=2, device="cpu")
    result = train(config, show_progress=False, log=lambda m: None)
    model_dir = RunDir(result.run_dir).model_dir
    assert (model_dir / "adapter_model.safetensors").stat().st_size < 30e6   # an adapter, not a model copy
    assert result.summary["after"]["forget_nll"] > result.summary["before"]["forget_nll"]


def test_demo_model_knows_the_authors_the_bundled_model_does_not(bundled_dir):
    """The shipped demo adapter really taught the four TOFU authors: something real to forget."""
    from core.data import encode_examples, load_examples
    from core.models import demo_model_dir, load_model, load_tokenizer
    from core.scoring import mean_token_nll

    tokenizer = load_tokenizer(str(bundled_dir))
    questions = load_examples(str(ASSETS / "demo" / "forget.jsonl"))[:8] + load_examples(str(ASSETS / "demo" / "retain.jsonl"))[:8]
    items = encode_examples(tokenizer, questions, 256, "demo").items
    demo = mean_token_nll(load_model(str(demo_model_dir())), items, tokenizer.pad_token_id)
    bundled = mean_token_nll(load_model(str(bundled_dir)), items, tokenizer.pad_token_id)
    assert demo < 0.3 < 1.5 < bundled
