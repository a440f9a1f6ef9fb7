from __future__ import annotations

from worker.model import Model
from worker.pipelines import tiny


def test_clip_tokenizer_is_built_offline_and_round_trips_any_text() -> None:
    tokenizer = tiny.clip_tokenizer()
    ids = tokenizer("a café, 猫!", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id and tokenizer.eos_token_id in ids
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == "acafé,猫!"


def test_t5_tokenizer_is_built_offline() -> None:
    tokenizer = tiny.t5_tokenizer()
    ids = tokenizer("waves at dusk", padding="max_length", max_length=16, truncation=True).input_ids
    assert len(ids) == 16 and tokenizer.eos_token_id in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "waves at dusk"


def test_the_tiny_model_does_every_task(tiny: Model) -> None:
    assert tiny.tasks == {"image-to-video", "text-to-image", "text-to-video"}
