"""Runs that refuse what they cannot honour: a resume with options that would make it another run,
a damaged or incomplete checkpoint folder, bad data. Each stops with one line that names the
option, file or record, and what to do; nothing is loaded first.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import grpo
import model as M
from checkpoints import check_checkpoint_folder, missing_checkpoint_files
from processor import CHAT_TEMPLATE
import sft
import training
from records import CheckpointError, DataError, run_script
from training import FIXED_ON_RESUME, FREE_ON_RESUME, load_trainer_state

HERE = os.path.dirname(os.path.abspath(__file__))
GRPO = ["--model", "tiny", "--limit", "8", "--train-offset", "0", "--prompts-per-step", "2", "--num-generations", "4",
        "--max-new-tokens", "4", "--micro-batch", "8", "--eval-every", "0", "--eval-size", "2", "--save-every", "0"]


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory):
    """A finished 1-step GRPO run of the tiny model, G = 4, the default lr (3e-4) and reward."""
    out = str(tmp_path_factory.mktemp("grpo") / "run")
    grpo.main(GRPO + ["--out", out, "--steps", "1"])
    return out


@pytest.fixture
def run_copy(grpo_run, tmp_path):
    """A copy of grpo_run (and its log) that a test may resume or damage."""
    out = str(tmp_path / "run")
    shutil.copytree(grpo_run, out)
    shutil.copy(grpo_run + ".log.jsonl", out + ".log.jsonl")
    return out


def log_rows(out):
    return [json.loads(line) for line in open(out + ".log.jsonl")]


@pytest.mark.parametrize("script", [sft, grpo])
def test_every_option_is_in_one_resume_group(script, monkeypatch):
    parsers = []
    real = training.parse_run_args
    monkeypatch.setattr(script, "parse_run_args", lambda p, argv: parsers.append(p) or real(p, argv))
    script.parse_args([])
    options = {action.dest for action in parsers[0]._actions} - {"help"}
    assert not FIXED_ON_RESUME & FREE_ON_RESUME
    assert options - FIXED_ON_RESUME - FREE_ON_RESUME == set()


def test_options_given_are_told_from_defaults():
    args = grpo.parse_args(["--lr", "3e-4", "--num-generations", "8", "--no-gather-for-generation"])
    assert args.options_given == ["gather_for_generation", "lr", "num_generations"]


def test_a_resume_that_changes_the_run_stops_naming_each_option(run_copy):
    before = open(run_copy + ".log.jsonl").read()
    with pytest.raises(SystemExit) as stop:
        grpo.main(["--resume", run_copy, "--num-generations", "2", "--lr", "1e-2", "--reward", "text", "--steps", "2"])
    message = str(stop.value.code)
    assert message.startswith(f"grpo.py: --resume {run_copy}: --lr 0.0003 -> 0.01, --num-generations 4 -> 2, "
                              "--reward text+adaptive -> text: the run was started with the first value")
    assert "--allow-option-changes" in message and "\n" not in message
    assert "--steps" not in message                              # may change: not refused
    assert open(run_copy + ".log.jsonl").read() == before and load_trainer_state(run_copy)["step"] == 1


def test_resume_alone_continues_the_run_with_its_options_and_logs_the_raised_steps(run_copy):
    grpo.main(["--resume", run_copy, "--steps", "2"])
    state = load_trainer_state(run_copy)
    assert state["step"] == 2
    assert {k: state["args"][k] for k in ("num_generations", "lr", "reward", "eval_every", "max_new_tokens")} == dict(
        num_generations=4, lr=3e-4, reward="text+adaptive", eval_every=0, max_new_tokens=4)
    assert state["args"]["model"] == "tiny" and state["config"]["schedule_steps"] == 1
    rows = log_rows(run_copy)
    assert [r.get("step") for r in rows] == [1, None, 2]
    assert rows[1] == {"resume": {"at_step": 1, "changed": {"--steps": [1, 2]}, "overridden": {}}}
    # resumed again, the options given again still match the run's (its model is the one it started from)
    grpo.main(GRPO + ["--resume", run_copy, "--steps", "3"])
    rows = log_rows(run_copy)
    assert [r.get("step") for r in rows] == [1, None, 2, None, 3]
    assert rows[3] == {"resume": {"at_step": 2, "changed": {"--steps": [2, 3]}, "overridden": {}}}


def test_typed_values_compare_with_what_the_run_used(run_copy):
    """The precision the runtime picked and the lr as derived are saved; typing them again (the lr
    of a LoRA run is 3e-4 x 10 = 0.0029999999999999996 when derived) is no change."""
    assert load_trainer_state(run_copy)["args"]["precision"] == "fp32"
    grpo.main(["--resume", run_copy, "--steps", "2", "--precision", "fp32", "--lr", "0.0003"])
    assert log_rows(run_copy)[1] == {"resume": {"at_step": 1, "changed": {"--steps": [1, 2]}, "overridden": {}}}
    assert training._same(0.0029999999999999996, 3e-3) and not training._same(3e-3, 3.1e-3)


def test_a_lora_run_keeps_its_base_even_with_the_override(grpo_run, tmp_path):
    lora = str(tmp_path / "lora")
    grpo.main(GRPO + ["--out", lora, "--steps", "1", "--lora-rank", "2"])
    before = open(lora + ".log.jsonl").read()
    with pytest.raises(SystemExit) as stop:
        grpo.main(["--resume", lora, "--model", grpo_run, "--lr", "1e-2", "--steps", "2", "--allow-option-changes"])
    assert str(stop.value.code).startswith(f"grpo.py: --resume {lora}: --model tiny -> {grpo_run}: ")
    assert "cannot change them" in str(stop.value.code) and "--lr" not in str(stop.value.code)
    assert open(lora + ".log.jsonl").read() == before


def test_a_full_fine_tune_may_repoint_its_reference_with_the_override(grpo_run, run_copy):
    """Its checkpoint holds every weight; --model is then the KL reference alone, and the folder it
    named may have moved."""
    with pytest.raises(SystemExit) as stop:
        grpo.main(["--resume", run_copy, "--model", grpo_run, "--steps", "2"])
    assert str(stop.value.code).startswith(f"grpo.py: --resume {run_copy}: --model tiny -> {grpo_run}: the run was "
                                           "started with the first value")
    assert "--allow-option-changes to change them anyway" in str(stop.value.code)
    grpo.main(["--resume", run_copy, "--model", grpo_run, "--steps", "2", "--allow-option-changes"])
    state = load_trainer_state(run_copy)
    assert state["step"] == 2 and state["config"]["ref_model"] == grpo_run
    assert log_rows(run_copy)[1]["resume"]["overridden"] == {"--model": ["tiny", grpo_run]}


def test_a_checkpoint_of_the_other_script_is_refused_before_it_loads(run_copy):
    before = open(run_copy + ".log.jsonl").read()
    with pytest.raises(SystemExit) as stop:
        sft.main(["--resume", run_copy, "--steps", "4"])
    assert str(stop.value.code) == (f"sft.py: --resume {run_copy}: that checkpoint was written by grpo.py: continue it "
                                    f"with `python grpo.py --resume {run_copy}`, or start a new sft.py run from it "
                                    f"with --model {run_copy}")
    assert open(run_copy + ".log.jsonl").read() == before and load_trainer_state(run_copy)["step"] == 1


def test_a_resume_with_no_step_left_says_so(run_copy):
    with pytest.raises(SystemExit) as stop:
        grpo.main(["--resume", run_copy])
    assert str(stop.value.code) == (f"grpo.py: --resume {run_copy}: the run is at step 1 and --steps is 1: nothing to "
                                    "train; give a larger --steps to continue it")


def test_a_resume_that_fails_while_loading_leaves_the_log_as_it_was(run_copy):
    before = open(run_copy + ".log.jsonl").read()
    truncate(os.path.join(run_copy, "model.safetensors"))
    with pytest.raises(CheckpointError):
        grpo.main(["--resume", run_copy, "--steps", "2"])      # a change to log, had it resumed
    assert open(run_copy + ".log.jsonl").read() == before


def test_the_override_is_recorded_in_the_log_and_meta_json(run_copy):
    grpo.main(["--resume", run_copy, "--steps", "2", "--lr", "1e-2", "--allow-option-changes"])
    note = {"at_step": 1, "changed": {"--steps": [1, 2]}, "overridden": {"--lr": [3e-4, 1e-2]}}
    assert log_rows(run_copy)[1] == {"resume": note}
    assert json.load(open(os.path.join(run_copy, "meta.json")))["resumes"] == [note]
    assert load_trainer_state(run_copy)["args"]["lr"] == 1e-2


def truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_a_truncated_trainer_state_is_named_with_the_previous_checkpoint(grpo_run, run_copy):
    truncate(os.path.join(run_copy, "trainer_state.pt"))
    with pytest.raises(CheckpointError) as error:
        grpo.main(["--resume", run_copy, "--steps", "2"])
    assert str(error.value) == (f"training.py: {run_copy}/trainer_state.pt is damaged (truncated or unreadable: "
                                "PytorchStreamReader failed reading zip archive: failed finding central directory)")
    shutil.copytree(grpo_run, run_copy + ".old")                 # a save killed after its second rename
    with pytest.raises(CheckpointError, match=rf"; {run_copy}\.old holds the previous checkpoint$"):
        grpo.main(["--resume", run_copy, "--steps", "2"])
    assert os.path.isdir(run_copy + ".old")                      # kept: it is the fallback


def test_a_truncated_weights_file_is_named_before_loading_as_a_user_sees_it(run_copy, tmp_path):
    truncate(os.path.join(run_copy, "model.safetensors"))
    message = (f"checkpoints.py: {run_copy}/model.safetensors is damaged (truncated or unreadable: Error while "
               "deserializing header: incomplete metadata, file not fully covered)")
    with pytest.raises(CheckpointError) as error:
        M.load_model(run_copy)
    assert str(error.value) == message
    done = subprocess.run([sys.executable, "evaluate.py", "--model", run_copy, "--limit", "2"], cwd=HERE,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in done.stderr
    adapter = str(tmp_path / "adapter")                          # a LoRA run's folder, its adapter cut short
    os.makedirs(adapter)
    with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
        json.dump({"base_model_name_or_path": "tiny", "peft_type": "LORA"}, f)
    shutil.copy(os.path.join(run_copy, "model.safetensors"), os.path.join(adapter, "adapter_model.safetensors"))
    with pytest.raises(CheckpointError, match=rf"^checkpoints.py: {adapter}/adapter_model.safetensors is damaged \("):
        M.load_model(adapter)


def test_a_folder_without_tokenizer_files_is_named_before_its_weights_load(run_copy, tmp_path, monkeypatch):
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        os.remove(os.path.join(run_copy, name))

    def no_loading(*args, **kwargs):
        raise AssertionError("the weights were loaded")
    monkeypatch.setattr(M.Qwen2_5_VLForConditionalGeneration, "from_pretrained", no_loading)
    monkeypatch.setattr(M.AutoTokenizer, "from_pretrained", no_loading)
    with pytest.raises(CheckpointError) as error:
        M.load_model(run_copy)
    assert str(error.value) == (
        f"checkpoints.py: {run_copy} lacks tokenizer (tokenizer.json, tokenizer_config.json), chat template "
        f"(chat_template.jinja); `python model.py complete "
        f"{run_copy} OUT --processor-from MODEL` writes a complete folder at OUT, a new one (MODEL: the model its weights "
        "came from, e.g. tiny, a hub id or a checkpoint folder); to --resume this run instead, copy those files into it "
        "from the folder it started from")
    monkeypatch.undo()
    complete = str(tmp_path / "complete")
    M.main(["complete", run_copy, complete, "--processor-from", "tiny"])   # the command the message gives
    with pytest.raises(SystemExit) as stop:                      # never into a folder that exists, its own included
        M.main(["complete", run_copy, run_copy, "--processor-from", "tiny"])
    assert str(stop.value.code) == (f"model.py complete: {run_copy} already exists; nothing there is replaced: "
                                    "give a new folder as OUT")
    assert os.path.isfile(os.path.join(run_copy, "trainer_state.pt"))
    model, processor = M.load_model(complete, device="cpu")
    weights = load_file(os.path.join(run_copy, "model.safetensors"))
    assert torch.equal(model.lm_head.weight, weights["lm_head.weight"] if "lm_head.weight" in weights
                       else weights["model.embed_tokens.weight"])
    assert processor.tokenizer.chat_template == CHAT_TEMPLATE


def test_a_missing_chat_template_or_preprocessor_config_is_named(run_copy):
    os.remove(os.path.join(run_copy, "chat_template.jinja"))
    os.remove(os.path.join(run_copy, "preprocessor_config.json"))
    assert missing_checkpoint_files(run_copy) == ["chat template (chat_template.jinja)", "preprocessor_config.json"]


def test_a_missing_image_is_one_line_with_its_hint_and_no_traceback(tmp_path, monkeypatch):
    from PIL import Image
    Image.new("RGB", (64, 64)).save(tmp_path / "scan.png")
    rows = [dict(image=image, question="Is there a lesion?", answer="yes", cot="A spot.")
            for image in ("scan.png", "missing.png", "scan.png")]
    for split in ("train", "val"):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    done = subprocess.run([sys.executable, "sft.py", "--model", "tiny", "--dataset", "json", "--data-root", str(tmp_path),
                           "--out", str(tmp_path / "out")], cwd=HERE, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"data.py: {tmp_path.name}/train.jsonl line 2: image 'missing.png' not found under {tmp_path.name}/; "
        "--skip-bad skips such records and counts them")

    def bad_data():
        raise DataError("data.py: x.jsonl line 2: missing field 'answer'", hint="--skip-bad skips such records")
    with pytest.raises(SystemExit, match="^data.py: x.jsonl line 2: missing field 'answer'; --skip-bad skips such"):
        run_script(bad_data)
    monkeypatch.setenv("MEDVQA_TRACEBACK", "1")                 # the traceback back, for debugging
    with pytest.raises(DataError):
        run_script(bad_data)


def no_loading(*args, **kwargs):
    raise AssertionError("something was loaded")


@pytest.mark.parametrize("name", ["config.json", "tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
                                  "chat_template.jinja"])
def test_a_truncated_small_file_is_named_damaged_before_anything_loads(name, grpo_run, run_copy, monkeypatch):
    file = os.path.join(run_copy, name)
    with open(file, "r+b") as f:
        f.truncate(20)                                           # a copy cut short by a full disk
    if name.endswith(".json"):                                   # the reason: what json itself says of the file
        with pytest.raises(json.JSONDecodeError) as parsed, open(file) as f:
            json.load(f)
        reason = str(parsed.value)
    else:                                                        # "{% for message in me"
        reason = "unexpected end of template, expected 'end of statement block'."
    if name == "config.json":
        assert reason == "Expecting value: line 2 column 19 (char 20)"
    monkeypatch.setattr(M.AutoTokenizer, "from_pretrained", no_loading)
    monkeypatch.setattr(M.Qwen2_5_VLForConditionalGeneration, "from_pretrained", no_loading)
    message = f"checkpoints.py: {file} is damaged (truncated or unreadable: {reason})"
    with pytest.raises(CheckpointError) as error:
        M.load_model(run_copy)
    assert str(error.value) == message                           # not "the hub could not provide it"
    shutil.copytree(grpo_run, run_copy + ".old")                 # a save killed after its second rename
    with pytest.raises(CheckpointError) as error:
        check_checkpoint_folder(run_copy)
    assert str(error.value) == f"{message}; {run_copy}.old holds the previous checkpoint"


def test_a_truncated_chat_template_is_one_line_as_a_user_sees_it(run_copy, tmp_path):
    file = os.path.join(run_copy, "chat_template.jinja")
    with open(file, "r+b") as f:
        f.truncate(20)
    done = subprocess.run([sys.executable, "grpo.py", "--model", run_copy, "--out", str(tmp_path / "out")], cwd=HERE,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"checkpoints.py: {file} is damaged (truncated or unreadable: unexpected end of template, expected 'end of "
        "statement block'.)")
    assert not os.path.exists(tmp_path / "out")


def test_a_truncated_adapter_config_or_chat_template_json_is_named_damaged(run_copy, tmp_path):
    adapter = str(tmp_path / "adapter")                          # a LoRA run's folder, its config cut short
    os.makedirs(adapter)
    with open(os.path.join(adapter, "adapter_config.json"), "w") as f:
        f.write('{"base_model_name_or_path": "ti')
    shutil.copy(os.path.join(run_copy, "model.safetensors"), os.path.join(adapter, "adapter_model.safetensors"))
    with pytest.raises(CheckpointError) as error:
        check_checkpoint_folder(adapter)
    assert str(error.value) == (f"checkpoints.py: {adapter}/adapter_config.json is damaged (truncated or unreadable: "
                                "Unterminated string starting at: line 1 column 29 (char 28))")
    os.remove(os.path.join(run_copy, "chat_template.jinja"))    # an older Qwen2-VL layout: the template in JSON
    with open(os.path.join(run_copy, "chat_template.json"), "w") as f:
        f.write('{"chat_template": "{% for')
    with pytest.raises(CheckpointError) as error:
        check_checkpoint_folder(run_copy)
    assert str(error.value) == (f"checkpoints.py: {run_copy}/chat_template.json is damaged (truncated or unreadable: "
                                "Unterminated string starting at: line 1 column 19 (char 18))")


def test_a_missing_chat_template_is_named_beside_a_missing_tokenizer(run_copy):
    for name in ("tokenizer.json", "chat_template.jinja", "preprocessor_config.json"):
        os.remove(os.path.join(run_copy, name))
    tokenizer = "tokenizer (tokenizer.json, tokenizer_config.json)"
    assert missing_checkpoint_files(run_copy) == [tokenizer, "chat template (chat_template.jinja)",
                                                  "preprocessor_config.json"]
    file = os.path.join(run_copy, "tokenizer_config.json")      # a template inside tokenizer_config.json counts
    with open(file) as f:
        config = json.load(f)
    with open(file, "w") as f:
        json.dump(config | {"chat_template": CHAT_TEMPLATE}, f)
    assert missing_checkpoint_files(run_copy) == [tokenizer, "preprocessor_config.json"]


def test_a_local_folder_whose_tokenizer_does_not_load_is_not_sent_to_the_hub(run_copy):
    with open(os.path.join(run_copy, "tokenizer.json"), "w") as f:
        json.dump({}, f)                                         # valid JSON, not a tokenizer
    with pytest.raises(CheckpointError) as error:
        M.load_model(run_copy)
    assert str(error.value) == (f"model.py: {run_copy}: its tokenizer (tokenizer.json, tokenizer_config.json) could "
                                "not be loaded (KeyError: 'added_tokens'); copy those files again from the folder "
                                "it came from")
