"""The packaged ssr_* lm-eval tasks: they load offline, read the real files, and render exactly the
requests of lm-eval's own hub task definitions."""

import json
from pathlib import Path

import pytest

from hub_mirror import hub_task_config, mirrored_tasks
from ssr.eval import local_docs
from ssr.eval.suite import task_manager

LOCAL = [
    "ssr_arc_easy", "ssr_arc_challenge", "ssr_piqa", "ssr_boolq", "ssr_hellaswag",
    "ssr_truthfulqa_mc1", "ssr_truthfulqa_mc2", "ssr_gsm8k",
]  # fmt: skip


@pytest.fixture(scope="module")
def loaded(data_root):
    return task_manager(False).load([*LOCAL, "ssr_mmlu"])


def _requests(task, n):
    task.build_all_requests(limit=n, rank=0, world_size=1)
    return [(inst.doc_id, inst.request_type, inst.arguments) for inst in task.instances]


def test_all_tasks_index_and_load_from_the_real_files(loaded):
    tasks = loaded["tasks"]
    expected_sizes = {
        "ssr_arc_easy": 2376,
        "ssr_arc_challenge": 1172,
        "ssr_piqa": 1838,
        "ssr_boolq": 3270,
        "ssr_hellaswag": 10042,
        "ssr_truthfulqa_mc1": 817,
        "ssr_truthfulqa_mc2": 817,
        "ssr_gsm8k": 1319,
        "ssr_mmlu_world_religions": 171,
    }
    for name, size in expected_sizes.items():
        assert len(tasks[name].eval_docs) == size, name
    assert loaded["group_map"]["ssr_mmlu"] == [
        "ssr_mmlu_elementary_mathematics", "ssr_mmlu_high_school_biology", "ssr_mmlu_high_school_geography",
        "ssr_mmlu_nutrition", "ssr_mmlu_world_religions", "ssr_mmlu_conceptual_physics",
        "ssr_mmlu_high_school_macroeconomics", "ssr_mmlu_sociology", "ssr_mmlu_marketing",
        "ssr_mmlu_philosophy"]  # fmt: skip


def test_rendered_docs_match_known_hub_items(loaded):
    tasks = loaded["tasks"]
    arc = tasks["ssr_arc_easy"]
    doc = arc.eval_docs[0]
    assert arc.doc_to_text(doc) == (
        "Question: Which statement best explains why photosynthesis is the foundation of most food webs?\nAnswer:"
    )
    assert arc.doc_to_target(doc) == 0 and len(arc.doc_to_choice(doc)) == 4
    piqa = tasks["ssr_piqa"]
    assert piqa.doc_to_text(piqa.eval_docs[0]) == (
        "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    )
    boolq = tasks["ssr_boolq"]
    text = boolq.doc_to_text(boolq.eval_docs[0])
    assert text.startswith("All biomass goes through") and text.endswith(
        "\nQuestion: does ethanol take more energy make that produces?\nAnswer:"
    )
    hs = tasks["ssr_hellaswag"]
    # lm-eval capitalises ctx_b ("he" -> "He"); the text file keeps it lower-case
    assert hs.doc_to_text(hs.eval_docs[0]) == "Roof shingle removal: A man is sitting on a roof. He"
    assert hs.doc_to_target(hs.eval_docs[0]) == 3
    mmlu = tasks["ssr_mmlu_world_religions"]
    assert (
        mmlu.config.description
        == "The following are multiple choice questions (with answers) about world religions.\n\n"
    )
    assert mmlu.doc_to_choice(mmlu.eval_docs[0]) == ["A", "B", "C", "D"]
    mc2 = tasks["ssr_truthfulqa_mc2"]
    d = mc2.eval_docs[0]
    assert d["mc2_targets"]["labels"] == [1, 1, 1, 0, 0, 0]
    assert mc2.doc_to_text(d).endswith("\n\nQ: What happens if you eat a pomegranate?\nA:")


@pytest.mark.parametrize(
    "ssr_task", [*[t for t in LOCAL if t != "ssr_hellaswag"], "ssr_mmlu_world_religions"]
)
def test_requests_equal_lm_evals_hub_task_on_the_same_docs(loaded, ssr_task):
    """Faithfulness: prompt, continuations, few-shot context and target match lm-eval's hub YAML."""
    ours = loaded["tasks"][ssr_task]
    hub = task_manager(False).load([hub_task_config(ssr_task)])["tasks"]
    (hub_task,) = hub.values()
    shots = ours.get_config("num_fewshot") or (1 if "mmlu" in ssr_task else 0)
    for task in (ours, hub_task):
        task.set_config("num_fewshot", shots)
        task.set_fewshot_seed(1234)
    assert _requests(ours, 4) == _requests(hub_task, 4)
    assert [ours.doc_to_target(d) for d in ours.eval_docs.select(range(4))] == [
        hub_task.doc_to_target(d) for d in hub_task.eval_docs.select(range(4))
    ]
    assert ours.config.metric_list == hub_task.config.metric_list
    assert (ours.config.process_results is None) == (hub_task.config.process_results is None)


def test_every_mmlu_subject_has_a_task_and_a_hub_mirror():
    tasks_dir = Path(local_docs.__file__).parent / "tasks" / "mmlu"
    for subject in local_docs.MMLU_SUBJECTS:
        text = (tasks_dir / f"ssr_mmlu_{subject}.yaml").read_text()
        assert f"subject: {subject}\n" in text
        assert f"ssr_mmlu_{subject}" in mirrored_tasks()
    assert len(local_docs.MMLU_SUBJECTS) == 57


def test_bad_rows_name_the_file_and_line(tmp_path):
    root = tmp_path / "arc"
    root.mkdir()
    (root / "arc_easy.jsonl").write_text(
        json.dumps({"query": "Question: ok?", "choices": ["a", "b"], "gold": 1})
        + "\n"
        + json.dumps({"query": "Question: bad", "choices": ["a", "b"], "gold": 5})
        + "\n"
    )
    with pytest.raises(local_docs.LocalDataError, match=r"arc_easy.jsonl:2: gold 5"):
        local_docs.load_arc_easy(data_root=str(tmp_path))
    (root / "arc_challenge.jsonl").write_text('{"query": "no prefix", "choices": ["a"], "gold": 0}\n')
    with pytest.raises(local_docs.LocalDataError, match=r"arc_challenge.jsonl:1: expected text to start"):
        local_docs.load_arc_challenge(data_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"piqa\.jsonl"):
        local_docs.load_piqa(data_root=str(tmp_path))


def test_mmlu_csv_header_is_checked(tmp_path):
    for split in ("test", "dev"):
        (tmp_path / "mmlu" / split).mkdir(parents=True)
    (tmp_path / "mmlu" / "test" / "anatomy_test.csv").write_text("q,a,b,c,d,answer\nx,1,2,3,4,0\n")
    with pytest.raises(local_docs.LocalDataError, match=r"anatomy_test\.csv: header"):
        local_docs.load_mmlu("anatomy", data_root=str(tmp_path))


def test_hellaswag_capitalises_only_a_trailing_lower_case_fragment():
    assert local_docs._hellaswag_query("Sumo: A video is shown. two men") == "Sumo: A video is shown. Two men"
    assert (
        local_docs._hellaswag_query("Cooking: Boil the pasta. Drain it.")
        == "Cooking: Boil the pasta. Drain it."
    )
    assert (
        local_docs._hellaswag_query("Baking: [title] Mix the flour.") == "Baking:. Mix the flour."
    )  # lm-eval preprocess
