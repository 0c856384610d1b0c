"""kl_task: forward KL(pi0 || pi) on a model whose logits are set by hand."""

import math
from types import SimpleNamespace

import pytest
import torch

from ssr.eval.items import ItemSink, read_source
from ssr.eval.kl_task import KLTask, KLTaskConfig
from ssr.runtime.configs import checked_dataclass


class Bigram(torch.nn.Module):
    """Next-token logits depend only on the current token: ``table[token]`` (a one-hot "decoder"
    and the table as the output layer, the two parts ``ssr.models.logits.response_logits`` runs)."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float32))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])

    def get_decoder(self):
        vocab = self.table.shape[0]
        return lambda input_ids, **_: SimpleNamespace(
            last_hidden_state=torch.nn.functional.one_hot(input_ids, vocab).float()
        )

    def get_output_embeddings(self):
        return lambda hidden: hidden @ self.table


# row a: tokens 0 1 1, both 1s scored -> p(1|0), p(1|1); row b: tokens 1 0, the 0 scored -> p(0|1)
ROWS = [([0, 1, 1], [-100, 1, 1]), ([1, 0], [-100, 0])]
UNIFORM = [[0.0, 0.0], [0.0, 0.0]]
MOVED = [[0.0, math.log(3)], [math.log(3), 0.0]]  # p(1|0) = 3/4, p(1|1) = 1/4, p(0|1) = 3/4


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path):
    monkeypatch.setenv("SSR_CACHE", str(tmp_path / "cache"))


def test_kl_is_the_hand_computed_log_ratio(tmp_path):
    task = KLTask(KLTaskConfig(batch_size=1))
    task.set_rows(["a", "b"], ROWS, pad_id=0)
    base = Bigram(UNIFORM)
    assert task.scores(base) == {"kl": pytest.approx(0.0, abs=1e-7), "n_rows": 2.0}
    assert len(list((tmp_path / "cache" / "kl_task").glob("*.json"))) == 1  # base log-probs cached
    sink = ItemSink(tmp_path / "items", "epoch_0")
    scores = task.scores(Bigram(MOVED), items=sink)
    # row a: (log 1/2 - log 3/4 + log 1/2 - log 1/4) / 2 = log(4/3) / 2; row b: log(1/2) - log(3/4)
    row_a, row_b = math.log(4 / 3) / 2, math.log(2 / 3)
    assert scores["kl"] == pytest.approx((row_a + row_b) / 2, rel=1e-6)
    items = read_source(sink.dir / "kl_task.jsonl")
    assert items["a"]["kl"] == pytest.approx(row_a, rel=1e-6) and items["a"]["n_tokens"] == 2
    assert items["b"]["kl"] == pytest.approx(row_b, rel=1e-6) and items["b"]["n_tokens"] == 1


def test_cached_base_log_probs_are_reused_and_keyed_by_the_weights(tmp_path, monkeypatch):
    first = KLTask(KLTaskConfig(batch_size=2))
    first.set_rows(["a", "b"], ROWS, pad_id=0)
    first.scores(Bigram(UNIFORM))
    again = KLTask(KLTaskConfig(batch_size=2))
    again.set_rows(["a", "b"], ROWS, pad_id=0)
    from ssr.eval import kl_task

    calls = []
    real = kl_task.row_nll
    monkeypatch.setattr(kl_task, "row_nll", lambda *a, **k: calls.append(1) or real(*a, **k))
    again.scores(Bigram(UNIFORM))
    assert len(calls) == 1  # only the scored model: the base NLL came from the cache
    other = KLTask(KLTaskConfig(batch_size=2))
    other.set_rows(["a", "b"], ROWS, pad_id=0)
    other.scores(Bigram(MOVED))  # other base weights: computed again
    assert len(calls) == 3 and len(list((tmp_path / "cache" / "kl_task").glob("*.json"))) == 2


def test_unset_rows_and_bad_keys_are_clear_errors():
    with pytest.raises(ValueError, match="rows not set"):
        KLTask(KLTaskConfig()).scores(Bigram(UNIFORM))
    with pytest.raises(KeyError, match="unknown kl_task keys"):
        checked_dataclass(KLTaskConfig, {"rows": 3}, "kl_task")
    with pytest.raises(ValueError, match="no training rows"):
        KLTask(KLTaskConfig()).set_rows([], [], 0)
