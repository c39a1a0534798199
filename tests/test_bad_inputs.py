"""Bad or careless inputs get a clear, named error before any compute, never a silent wrong number.

Each test here is one input that used to load, run or write something wrong (or fail with a
raw, unnamed error deep inside a hook); see the reliability issue's list.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace

import pytest
import torch

from circuits import metrics
from circuits.engines.ablation import Ablation
from circuits.engines.common import PromptModelMismatch
from circuits.engines.discovery import acdc, select_topn
from circuits.engines.edges import edge_graph
from circuits.engines.faithfulness import completeness, evaluate_ablated, faithfulness
from circuits.engines.patching import activation_patching
from circuits.engines.path_patching import path_patching
from circuits.metrics import UndefinedMetricError
from circuits.models import ModelLoadError, load_model
from circuits.prompts import PromptSet
from circuits.scores import Scores
from circuits.tasks import TaskVocabularyError, build_task, prompt_set_from_texts
from tests.conftest import write_tiny_model


@pytest.fixture(scope="module")
def gpt2(engine_models):
    return engine_models("gpt2")


@pytest.fixture(scope="module")
def ps(gpt2):
    return build_task("ioi", gpt2.tokenizer, n=4, seed=0)


def same_pair(ps: PromptSet) -> PromptSet:
    """Corrupted prompts equal to the clean ones: every clean-minus-corrupted difference is 0."""
    return replace(ps, corrupted=ps.clean.clone())


# ---------------------------------------------------------------- loading models


def _copy_checkpoint(src, dst, drop=()):
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in drop:
            shutil.copy(f, dst / f.name)
    return dst


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, word_tokenizer):
    path = tmp_path_factory.mktemp("ckpt")
    write_tiny_model(path, "gpt2", word_tokenizer)
    return path


def test_a_checkpoint_without_tokenizer_files_is_refused(checkpoint, tmp_path):
    d = _copy_checkpoint(checkpoint, tmp_path / "m", drop=("tokenizer.json", "tokenizer_config.json"))
    with pytest.raises(ModelLoadError, match="has no tokenizer"):
        load_model(str(d), device="cpu")


def test_a_tokenizer_json_without_its_config_is_refused(checkpoint, tmp_path):
    d = _copy_checkpoint(checkpoint, tmp_path / "m", drop=("tokenizer_config.json",))
    with pytest.raises(ModelLoadError, match="no tokenizer_config.json"):
        load_model(str(d), device="cpu")


def test_a_truncated_weights_file_is_named(checkpoint, tmp_path):
    d = _copy_checkpoint(checkpoint, tmp_path / "m")
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="could not load .*SafetensorError"):
        load_model(str(d), device="cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_named_error(checkpoint):
    with pytest.raises(ModelLoadError, match="sees no CUDA GPU"):
        load_model(str(checkpoint), device="cuda")
    with pytest.raises(ModelLoadError, match="unknown device 'tpu'"):
        load_model(str(checkpoint), device="tpu")


# ---------------------------------------------------------- prompts that do not fit the model


def test_prompts_of_another_tokenizer_are_refused_before_compute(gpt2, bpe_tokenizer, word_tokenizer):
    other_ids = build_task("ioi", bpe_tokenizer, n=4, seed=0)  # ids beyond the word-level vocabulary
    with pytest.raises(PromptModelMismatch, match="outside the model's vocabulary"):
        activation_patching(gpt2, other_ids, "z", progress=False)
    from circuits.tasks import all_task_words
    from circuits.tokenization import word_level_tokenizer

    shuffled = word_level_tokenizer(sorted(all_task_words())[:400])  # ids in range, other words
    in_range = build_task("ioi", shuffled, n=4, seed=0)
    assert int(in_range.clean.max()) < gpt2.cfg.d_vocab
    with pytest.raises(PromptModelMismatch, match="not with this model's tokenizer"):
        faithfulness(gpt2, in_range, ["a1.h0"])


def test_token_ids_outside_the_vocabulary_are_refused(gpt2, ps):
    with pytest.raises(PromptModelMismatch, match="token id -1 in answers"):
        activation_patching(gpt2, replace(ps, answers=torch.full_like(ps.answers, -1)), "z", progress=False)


def test_prompts_longer_than_the_context_are_refused():
    model = load_model("zoo:toyworld", device="cpu")
    long = build_task("colored_objects", model.tokenizer, n=2, seed=0, shots=1, n_objects=5)
    assert long.n_pos > model.cfg.n_ctx
    with pytest.raises(PromptModelMismatch, match="longer than the model's context of 64"):
        activation_patching(model, long, "z", progress=False)


def test_a_task_refuses_prompts_longer_than_its_tokenizer_allows(word_tokenizer):
    import copy

    tok = copy.deepcopy(word_tokenizer)
    tok.model_max_length = 16
    with pytest.raises(ValueError, match="longer than tokenizer .* model_max_length of 16"):
        build_task("colored_objects", tok, n=2, seed=0)


def test_an_ablation_reference_of_another_tokenizer_is_refused(gpt2, ps, bpe_tokenizer):
    ref = build_task("ioi", bpe_tokenizer, n=4, seed=1)
    with pytest.raises(PromptModelMismatch, match="reference PromptSet"):
        faithfulness(gpt2, ps, ["a1.h0"], ablation=Ablation("mean", reference=ref))


def test_an_empty_prompt_set_is_refused(ps):
    with pytest.raises(ValueError, match="selects none of the 4 prompts"):
        ps.subset([])
    with pytest.raises(ValueError, match="has no prompts"):
        replace(ps, clean=ps.clean[:0])


def test_a_string_is_not_a_subset(ps):
    with pytest.raises(TypeError, match="subset takes prompt indices"):
        ps.subset("IO")


def test_an_ablation_seed_must_be_an_integer():
    with pytest.raises(TypeError, match="Ablation seed must be an integer, got 'x'"):
        Ablation("resample", seed="x")


def test_float_token_tensors_are_refused(ps):
    with pytest.raises(TypeError, match="clean must hold integer token ids"):
        replace(ps, clean=ps.clean.float())


def test_an_answer_equal_to_the_wrong_answer_is_refused(ps, word_tokenizer):
    with pytest.raises(ValueError, match="the answer and the wrong answer are the same token"):
        replace(ps, wrong_answers=ps.answers.clone())
    with pytest.raises(ValueError, match="the same token"):
        prompt_set_from_texts(word_tokenizer, ["Mary went to the store"], ["John went to the store"],
                              ["Mary"], ["Mary"])


# ----------------------------------------------------------------- unknown words


def test_unknown_words_in_user_pairs_are_named(word_tokenizer):
    with pytest.raises(TaskVocabularyError, match="Zorblax"):
        prompt_set_from_texts(word_tokenizer, ["Then Zorblax went to the store"], ["Then Mary went to the store"],
                              ["Mary"], ["John"])
    with pytest.raises(TaskVocabularyError, match="Quuxly' is unknown"):
        prompt_set_from_texts(word_tokenizer, ["Then John went"], ["Then Mary went"], ["Quuxly"], ["John"])


def test_a_string_where_a_list_of_prompts_belongs_is_refused(word_tokenizer):
    with pytest.raises(TypeError, match="clean must be a list of strings"):
        prompt_set_from_texts(word_tokenizer, "ab", "cd", ["Mary", "John"], ["John", "Mary"])


def test_a_tokenizer_that_hides_its_unknown_token_still_drops_unknown_words():
    """A WordLevel tokenizer maps unknown words to <unk> without declaring unk_token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from circuits.tasks import all_task_words

    words = sorted(w for w in all_task_words() if w not in {"Alice", "Bob", "Carl", "Alex", "Andrew"})
    vocab = {"<pad>": 0, "<bos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                pre_tokenizers.Punctuation(behavior="isolated")])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", pad_token="<pad>")
    assert tok.unk_token_id is None
    built = build_task("ioi", tok, n=16, seed=0)
    assert not (built.clean == 2).any() and not (built.answers == 2).any()
    assert "Alice" in built.provenance["words_dropped"]["names"]


def test_prepend_bos_without_a_bos_token_is_named(word_tokenizer):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=word_tokenizer.backend_tokenizer, pad_token="<pad>")
    with pytest.raises(ValueError, match="has no BOS token"):
        prompt_set_from_texts(tok, ["Then John went"], ["Then Mary went"], ["Mary"], ["John"], prepend_bos=True)


# ------------------------------------------------------- undefined numbers: errors, not NaN


def test_normalizing_by_a_zero_difference_is_an_error(gpt2, ps):
    scores = activation_patching(gpt2, same_pair(ps), "z", progress=False)
    with pytest.raises(UndefinedMetricError, match="is zero"):
        scores.normalized()


def test_faithfulness_with_no_gap_to_close_is_an_error(gpt2, ps):
    with pytest.raises(UndefinedMetricError, match="F\\(model\\) minus F\\(empty circuit\\)"):
        faithfulness(gpt2, same_pair(ps), ["a1.h0"], ablation=Ablation("corrupted"))


def test_a_mib_curve_with_no_gap_is_an_error(gpt2, ps):
    from circuits.engines.attribution import EdgeScores
    from circuits.engines.mib import faithfulness_curve

    graph = edge_graph(gpt2)
    scores = EdgeScores(graph, torch.rand(graph.mask.shape), None, {"method": "random"})
    with pytest.raises(UndefinedMetricError, match="is zero"):
        faithfulness_curve(gpt2, same_pair(ps), scores)


def test_a_metric_that_returns_nan_is_an_error(gpt2, ps):
    def broken(logits, prompts):
        return torch.full((len(prompts),), float("nan"))

    with pytest.raises(ValueError, match="returned nan for 4 of 4 prompts"):
        activation_patching(gpt2, ps, "z", metric=broken, progress=False)


def test_result_json_is_strict_and_round_trips_undefined_cells(gpt2, ps, tmp_path):
    scores = path_patching(gpt2, ps, ["a1.h0<q>"], senders=["a0.h0", "a0.h2"], progress=False)
    assert torch.isnan(scores.values[1]).all()  # heads that are not senders: not scored
    path = scores.save(tmp_path / "s.json")

    def no_constants(token):
        raise ValueError(f"bare {token} in JSON")

    json.loads(path.read_text(), parse_constant=no_constants)
    back = Scores.load(path)
    assert torch.isnan(back.values[1]).all()
    torch.testing.assert_close(back.values, scores.values, equal_nan=True)


# ---------------------------------------------------------------------- engines


@pytest.mark.parametrize("tau", [-1.0, math.nan, math.inf, "0.1"])
def test_acdc_refuses_a_threshold_that_removes_nothing(gpt2, ps, tau):
    with pytest.raises(ValueError, match="tau must be a finite number >= 0"):
        acdc(gpt2, ps, tau, progress=False)


def test_strings_where_lists_belong_are_refused(gpt2, ps):
    with pytest.raises(TypeError, match="circuit must be a list, got the string 'a0.h1'"):
        faithfulness(gpt2, ps, "a0.h1")
    with pytest.raises(TypeError, match="receivers must be a list"):
        path_patching(gpt2, ps, "a1.h0<q>", progress=False)
    with pytest.raises(TypeError, match="layers must be a list"):
        activation_patching(gpt2, ps, "z", layers="01", progress=False)
    with pytest.raises(TypeError, match="must be a PromptSet"):
        activation_patching(gpt2, ["Then, Mary and John went"], "z", progress=False)


def test_unknown_positions_in_path_patching_are_named_before_compute(gpt2, ps, monkeypatch):
    def no_compute(*a, **k):
        raise AssertionError("computed before checking its arguments")

    monkeypatch.setattr("circuits.engines.path_patching.BlockReplay", no_compute)
    for key in ("sender_position", "receiver_position"):
        with pytest.raises(ValueError, match=f"{key} 'XYZ' is not named"):
            path_patching(gpt2, ps, ["a1.h0<q>"], progress=False, **{key: "XYZ"})


def test_out_of_range_nodes_are_named(gpt2, ps):
    from circuits.names import parse_node

    with pytest.raises(ValueError, match="head 99 out of range"):
        evaluate_ablated(gpt2, ps, [[(parse_node("a0.h99"), "all")]])
    with pytest.raises(ValueError, match="layer 9 out of range"):
        completeness(gpt2, ps, ["a1.h0"], classes={"x": ["a9.h9"]})
    with pytest.raises(TypeError, match="layer must be an integer, got 0.7"):
        activation_patching(gpt2, ps, "z", layers=[0.7], progress=False)


def test_bad_numbers_are_named(gpt2, ps, word_tokenizer):
    with pytest.raises(ValueError, match="memory_budget must be a positive number of bytes"):
        activation_patching(gpt2, ps, "z", memory_budget="1GB", progress=False)
    with pytest.raises(TypeError, match="seed must be an integer, got 'abc'"):
        build_task("ioi", word_tokenizer, 4, seed="abc")
    with pytest.raises(ValueError, match="n must be a positive integer"):
        build_task("ioi", word_tokenizer, n=True)
    with pytest.raises(ValueError, match="more than the 1000000"):
        build_task("ioi", word_tokenizer, n=10**7)  # refused at once, not after minutes of sampling
    graph = edge_graph(gpt2)
    with pytest.raises(ValueError, match="n must be an integer number of edges"):
        select_topn(graph, torch.rand(graph.mask.shape), 1.5)


def test_scores_name_their_bad_inputs(gpt2, ps, tmp_path):
    scores = activation_patching(gpt2, ps, "z", layers=[0], progress=False)
    with pytest.raises(ValueError, match="by must be 'abs', 'max' or 'min'"):
        scores.top(3, by="largest")
    with pytest.raises(ValueError, match="lacks \\['values', 'axes'\\]"):
        Scores.from_dict({})
    bad = tmp_path / "bad.json"
    bad.write_text("not json")
    with pytest.raises(ValueError, match="bad.json"):
        Scores.load(bad)


@pytest.mark.parametrize("content, match", [("a,b\n1,2\n", "is not a PromptSet JSON file"),
                                            ("[1, 2]", "holds a JSON list"),
                                            ('{"task": "x"}', "lacks \\['answers'")])
def test_loading_a_bad_prompt_file_names_it(tmp_path, content, match):
    path = tmp_path / "prompts.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=f"prompts.json.*{match}|{match}.*prompts.json"):
        PromptSet.load(path)
    with pytest.raises(OSError, match="nope.json"):
        PromptSet.load(tmp_path / "nope.json")


def test_metrics_normalized_metric_raises_the_named_error():
    with pytest.raises(UndefinedMetricError):
        metrics.normalized_metric(1.0, 2.0, 2.0)


# ------------------------------------------------------------------ runs and the CLI


def test_a_run_that_fails_late_leaves_the_previous_results_whole(tmp_path, monkeypatch):
    import analyses.ioi as ioi

    folder = tmp_path / "ioi" / "zoo_toyworld"
    folder.mkdir(parents=True)
    (folder / "ioi.json").write_text('{"old": true}')
    (folder / "circuit.png").write_bytes(b"old")

    def fail(*a, **k):
        raise RuntimeError("late failure")

    monkeypatch.setattr("circuits.figures.circuit_figure", fail)
    assert ioi.main(["--n", "4", "--out", str(tmp_path)]) == 2  # one line: "circuits: error: late failure"
    assert sorted(p.name for p in folder.iterdir()) == ["circuit.png", "ioi.json"]
    assert json.loads((folder / "ioi.json").read_text()) == {"old": True}
    assert [p.name for p in folder.parent.iterdir()] == ["zoo_toyworld"]  # no staging folder left


def test_an_unwritable_output_fails_before_any_compute(tmp_path, monkeypatch, capsys):
    import analyses.discover as discover

    def no_compute(*a, **k):
        raise AssertionError("computed before checking the output folder")

    monkeypatch.setattr("circuits.models.load_model", no_compute)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert discover.main(["--out", str(blocker / "results")]) == 2
    assert "cannot write results under" in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["build", "ioi", "--options", "{bad json"], "--options is not valid JSON"),
    (["build", "ioi", "--options", "[1, 2]"], "--options must be a JSON object"),
    (["build", "ioi", "--n", "abc"], "invalid int value: 'abc'"),
    (["build", "ioi", "--n", "0"], "n must be a positive integer"),
    (["build", "nosuchtask"], "unknown task 'nosuchtask'"),
    (["info", "zoo:toyworld", "--device", "tpu"], "unknown device 'tpu'"),
    (["analyses.discover", "--tau", "-1"], "tau must be a finite number >= 0"),
    (["analyses.discover", "--tau", "nan"], "tau must be a finite number >= 0"),
    (["zoo", "check", "nosuchmodel"], "unknown zoo model"),
    (["build", "colored_objects", "--options", '{"shots": 1, "n_objects": 5}', "--n", "2"],
     "longer than the model's context of 64"),
    (["analyses.ioi", "--n", "0"], "n must be a positive integer"),
])
def test_cli_errors_are_one_line_with_a_nonzero_exit(argv, match, capsys, tmp_path):
    import importlib

    from circuits.cli import main

    if argv[0].startswith("analyses."):  # an analysis module's own command line
        main = importlib.import_module(argv[0]).main
        argv = [*argv[1:], "--out", str(tmp_path)]
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    err = capsys.readouterr().err
    lines = [x for x in err.replace("\r", "\n").splitlines() if x.strip() and "Loading weights" not in x]
    assert rc != 0
    assert len(lines) == 1 and lines[0].startswith("circuits"), err
    assert "Traceback" not in err and match in lines[0]
