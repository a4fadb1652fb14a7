"""Real-dataset loaders on tiny invented fixtures in each dataset's layouts (no network)."""

from pathlib import Path

import datasets
import pytest

from dits.errors import DitsError
from dits.tasks.debate import GSM8K, MATH, MMLU, ARCChallenge
from dits.tasks.qa import CBT, HotpotQA, TriviaQA, TwoWikiMultiHopQA, deal_paragraphs

FIXTURES = Path(__file__).parent / "fixtures" / "tasks"


def fixture(name: str) -> str:
    return str(FIXTURES / name)


def ids(task, split):
    return [instance.id for instance in task.instances(split)]


# --- splits -------------------------------------------------------------------------------------------


def test_validation_is_the_tail_of_train_and_disjoint_from_it():
    task = GSM8K(data_files={"train": fixture("gsm8k.jsonl")}, validation_size=3)
    train, validation = ids(task, "train"), ids(task, "validation")
    assert validation == ["train-6", "train-7"]  # rows 6-8; row 8 has no "####" and is skipped
    assert train == ["train-0", "train-1", "train-2", "train-3", "train-4", "train-5"]
    assert not set(train) & set(validation)


def test_a_given_validation_file_is_used_instead_of_carving():
    task = GSM8K(
        data_files={"train": fixture("gsm8k.jsonl"), "validation": fixture("gsm8k.jsonl")}, validation_size=2
    )
    assert ids(task, "validation") == ["validation-7"]  # last 2 rows; the last one has no answer
    # every train question also occurs in that validation slice or not: the shared one is dropped from train
    assert "train-7" not in ids(task, "train")
    assert len(ids(task, "train")) == 7


def test_train_must_keep_rows_after_the_validation_slice():
    task = GSM8K(data_files={"train": fixture("gsm8k.jsonl")})
    with pytest.raises(DitsError, match="validation_size=200"):
        list(task.instances("train"))


def test_test_limit_and_missing_split_file():
    task = HotpotQA(data_files={"test": fixture("multihop.jsonl")}, test_limit=2)
    assert ids(task, "test") == ["mh000", "mh001"]
    with pytest.raises(
        DitsError, match=r"task hotpotqa: no data file for split 'train'; set task\.data_files\.train"
    ):
        list(task.instances("train"))
    with pytest.raises(DitsError, match=r"task\.data_files\.validation \(or task\.data_files\.train"):
        list(task.instances("validation"))


def test_missing_file_bad_key_and_bad_split_are_user_errors(tmp_path):
    with pytest.raises(DitsError, match="data file not found: .*nope.jsonl"):
        GSM8K(data_files={"test": str(tmp_path / "nope.jsonl")})
    with pytest.raises(DitsError, match="unknown data_files key 'dev'"):
        GSM8K(data_files={"dev": fixture("gsm8k.jsonl")})
    with pytest.raises(DitsError, match="unknown split 'dev'"):
        list(GSM8K(data_files={"test": fixture("gsm8k.jsonl")}).instances("dev"))  # type: ignore[arg-type]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question": "q", "answer": "#### 1"}\n{not json\n')
    with pytest.raises(DitsError, match="cannot read .*broken.jsonl"):
        list(GSM8K(data_files={"test": str(broken)}).instances("test"))


def test_local_only_datasets_need_files():
    with pytest.raises(DitsError, match="2wikimultihopqa is not on the Hugging Face Hub"):
        TwoWikiMultiHopQA()
    with pytest.raises(DitsError, match="math is not on the Hugging Face Hub"):
        MATH()


# --- multi-hop QA ---------------------------------------------------------------------------------------


def test_hotpotqa_renders_whole_paragraphs_and_splits_gold_between_agents():
    task = HotpotQA(data_files={"test": fixture("multihop.jsonl")})
    instances = list(task.instances("test"))
    first = instances[0]
    assert first.family == "qa" and first.metric == "f1" and first.answer_format == "tag"
    assert first.answers == ("Merrow",)
    everything = first.context["alice"] + first.context["bob"]
    assert sorted(everything) == sorted(
        [
            "Ilse Varnholt: Ilse Varnholt (1871 – 1940) was a landscape painter. Ilse Varnholt was born in Dunmere.",
            "Dunmere: Dunmere is a small market town. The river Merrow flows through Dunmere.",
        ]
        + [f"Hall {k} of Dunmere: Hall {k} is an old building. It has a red roof." for k in range(4)]
    )
    for instance in instances:
        gold = [title + ":" for title in instance.meta["supporting_titles"]]
        if len(gold) == 2:  # one gold paragraph per agent
            for agent in ("alice", "bob"):
                assert sum(p.startswith(tuple(gold)) for p in instance.context[agent]) == 1
    assert instances[3].context == {"alice": (), "bob": ()}  # a row without paragraphs
    assert instances[4].meta["supporting_titles"] == ["Beatrix Holm", "Brackholt"]


def test_split_is_seeded_by_task_split_and_id():
    task = HotpotQA(data_files={"test": fixture("multihop.jsonl"), "train": fixture("multihop.jsonl")})
    again = HotpotQA(data_files={"test": fixture("multihop.jsonl")})
    assert list(task.instances("test")) == list(again.instances("test"))
    paragraphs = [f"p{i}" for i in range(10)]
    splits = {deal_paragraphs(paragraphs, [0, 1], ("hotpotqa", "test", f"id{i}")) for i in range(20)}
    assert len(splits) > 10  # different ids, different random splits
    assert deal_paragraphs(paragraphs, [0, 1], ("x", "test", "a")) == deal_paragraphs(
        paragraphs, [0, 1], ("x", "test", "a")
    )
    for alice, bob in splits:
        assert ("p0" in alice) != ("p1" in alice)  # the two gold paragraphs never go to the same agent
        assert sorted(alice + bob) == sorted(paragraphs)


def test_hub_layout_and_json_array_give_the_same_instances():
    original = list(HotpotQA(data_files={"test": fixture("multihop.jsonl")}).instances("test"))
    hub = list(HotpotQA(data_files={"test": fixture("hotpot_hub.jsonl")}).instances("test"))
    assert [i.context for i in hub] == [i.context for i in original]
    array = list(TwoWikiMultiHopQA(data_files={"test": fixture("multihop_array.json")}).instances("test"))
    assert [i.id for i in array] == ["mh000", "mh001", "mh002"]
    assert all(i.task == "2wikimultihopqa" for i in array)


# --- TriviaQA and CBT -----------------------------------------------------------------------------------


def test_triviaqa_hub_layout_deals_snippets_alternately():
    instances = list(TriviaQA(data_files={"test": fixture("triviaqa_hub.jsonl")}).instances("test"))
    first = instances[0]
    assert first.id == "tq_0"
    assert first.answers == ("Ferrowey", "Ferrowey Isle", "ferrowey")
    assert (
        len(first.context["alice"]) == 2 and len(first.context["bob"]) == 1
    )  # 3 snippets, empty one dropped
    assert sorted(first.context["alice"] + first.context["bob"]) == [
        f"Snippet {k} about Ferrowey." for k in range(3)
    ]
    assert instances[3].answers == ("1877",)
    assert first.meta == {"evidence": True}


def test_triviaqa_other_layouts():
    (official,) = TriviaQA(data_files={"test": fixture("triviaqa_official.json")}).instances("test")
    assert official.id == "tc_9" and official.answers == ("Pellum", "Pellum City")
    assert len(official.context["alice"]) == len(official.context["bob"]) == 1
    qa_only = list(TriviaQA(data_files={"test": fixture("triviaqa_qa_only.jsonl")}).instances("test"))
    assert [i.id for i in qa_only] == ["x1", "x2"]
    assert qa_only[0].answers == ("Tessel", "River Tessel")
    assert qa_only[0].context == {"alice": (), "bob": ()} and qa_only[0].meta == {"evidence": False}
    (turns,) = TriviaQA(data_files={"test": fixture("triviaqa_turns.jsonl")}).instances("test")
    assert turns.id == "0" and turns.question.startswith("Which invented bird")
    assert turns.answers == ("Nightwren", "night wren")
    assert "empty contexts" in TriviaQA.description


def test_cbt_text_and_json_layouts_agree():
    from_json = list(CBT(data_files={"test": fixture("cbt_cn.jsonl")}).instances("test"))
    from_text = list(CBT(data_files={"test": fixture("cbt_cn.txt")}).instances("test"))
    assert from_json == from_text  # the truncated story at the end of the text file is dropped
    assert len(from_json) == 3
    first = from_json[0]
    assert first.context["alice"][0] == "Tam walked to the mill on day 1 ."
    assert len(first.context["alice"]) == len(first.context["bob"]) == 10
    assert first.context["bob"][0].endswith("day 11 .")
    assert "XXXXX" in first.question and "- lantern" in first.question
    assert first.answers == ("basket",)


def test_cbt_text_errors_name_the_line(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 fine .\nnot numbered\n")
    with pytest.raises(DitsError, match=r"bad\.txt:2: expected a numbered CBT line"):
        list(CBT(data_files={"test": str(bad)}).instances("test"))


# --- debate datasets ------------------------------------------------------------------------------------


def test_gsm8k_answer_after_hashes():
    first = next(GSM8K(data_files={"test": fixture("gsm8k.jsonl")}).instances("test"))
    assert first.answers == ("12",) and first.metric == "numeric" and first.answer_format == "boxed"
    assert first.family == "debate" and first.context == {}
    task = GSM8K(data_files={"test": fixture("gsm8k.jsonl")})
    assert task.extract(r"so \boxed{12.0} buttons", first) == "12.0"
    assert task.score("12.0", first) == 1.0 and task.score("13", first) == 0.0


def test_math_answer_is_the_normalised_last_box():
    instances = list(MATH(data_files={"test": fixture("math.jsonl")}).instances("test"))
    assert [i.answers[0] for i in instances] == [r"\frac{1}{2}", "3", r"\{-1,1\}", "1200"]
    assert [i.id for i in instances][:3] == ["test/prealgebra/1.json", "test/algebra/2.json", "test-2"]
    assert instances[0].meta == {"level": "Level 1", "type": "Prealgebra"}
    assert instances[0].metric == "math"


def test_arc_answer_is_the_choice_text():
    instances = list(ARCChallenge(data_files={"test": fixture("arc.jsonl")}).instances("test"))
    assert [i.answers for i in instances] == [("a gale-cup",), ("seeds",)]  # unknown key "E" skipped
    assert instances[0].question.splitlines()[1:] == [
        "Choose your answer from these options:",
        "- a gale-cup",
        "- a rain-horn",
        "- a sun-dial",
    ]
    assert instances[0].metric == "em" and instances[0].answer_format == "tag"


def test_mmlu_layouts_shuffle_and_arc_exclusion():
    letters = MMLU(data_files={"test": fixture("mmlu.jsonl")})
    indices = MMLU(data_files={"test": fixture("mmlu_hub.jsonl")})
    assert list(letters.instances("test")) == list(indices.instances("test"))
    order = ids(letters, "test")
    assert sorted(order) == sorted(f"test-{i}" for i in range(10)) and order != sorted(order)
    assert order == ids(MMLU(data_files={"test": fixture("mmlu.jsonl")}), "test")  # fixed seed
    assert order != ids(MMLU(data_files={"test": fixture("mmlu.jsonl")}, shuffle_seed=1), "test")
    first = next(letters.instances("test"))
    index = int(first.id.split("-")[1])
    assert first.answers == (f"option {index}{'abcd'[index % 4]}",)
    without_arc = MMLU(data_files={"test": fixture("mmlu.jsonl")}, arc_files=[fixture("arc.jsonl")])
    assert "test-7" not in ids(without_arc, "test") and len(ids(without_arc, "test")) == 9
    (nested,) = list(MMLU(data_files={"test": fixture("mmlu_aux.jsonl")}, test_limit=1).instances("test"))
    assert nested.meta["subject"] == "imaginary_history"
    with pytest.raises(DitsError, match="data file not found"):
        MMLU(data_files={"test": fixture("mmlu.jsonl")}, arc_files=["/nonexistent/arc.jsonl"])


# --- Hub loading (load_dataset replaced by a fake that serves the fixtures) ------------------------------

HUB_FIXTURES = {
    ("hotpotqa/hotpot_qa", "distractor"): "hotpot_hub.jsonl",
    ("mandarjoshi/trivia_qa", "rc"): "triviaqa_hub.jsonl",
    ("cam-cst/cbt", "CN"): "cbt_cn.jsonl",
    ("openai/gsm8k", "main"): "gsm8k.jsonl",
    ("allenai/ai2_arc", "ARC-Challenge"): "arc.jsonl",
    ("cais/mmlu", "all"): "mmlu_hub.jsonl",
}


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []
    real = datasets.load_dataset

    def load_dataset(path, name=None, *, split, **kwargs):
        if path == "json":
            return real(path, name, split=split, **kwargs)
        calls.append((path, name, split))
        if (path, name) not in HUB_FIXTURES:
            raise ConnectionError("no network in tests")
        return real("json", data_files=fixture(HUB_FIXTURES[(path, name)]), split="train")

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


@pytest.mark.parametrize(
    ("task_cls", "train_split", "test_split"),
    [
        (HotpotQA, "train", "validation"),
        (TriviaQA, "train", "validation"),
        (CBT, "train", "test"),
        (GSM8K, "train", "test"),
        (ARCChallenge, "train", "test"),
        (MMLU, "auxiliary_train", "test"),
    ],
)
def test_hub_ids_configs_and_splits(fake_hub, task_cls, train_split, test_split):
    task = task_cls(validation_size=2)
    assert list(task.instances("test"))
    assert list(task.instances("validation"))
    path, config = task.hub.path, task.hub.config
    assert (path, config, test_split) in fake_hub
    assert (path, config, train_split) in fake_hub
    assert all(split in (train_split, test_split) or p == "allenai/ai2_arc" for p, _, split in fake_hub)


def test_mmlu_from_the_hub_drops_arc_questions(fake_hub):
    task = MMLU()
    assert "test-7" not in ids(task, "test")
    assert {split for path, _, split in fake_hub if path == "allenai/ai2_arc"} == {
        "train",
        "validation",
        "test",
    }
    assert "test-7" in ids(MMLU(exclude_arc=False), "test")


def test_hub_failure_says_how_to_work_offline(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        DitsError, match=r"hotpotqa/hotpot_qa \(distractor\) split 'validation'.*task\.data_files\.test"
    ):
        list(HotpotQA().instances("test"))
