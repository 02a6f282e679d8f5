"""Tests for model.py: the tiny model, prompts, masks, log-probs and checkpoints."""

import copy
import os

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

import model as M
import processor as P
import policy
from model import save_checkpoint
from training import load_trainer_state

CORPUS = ["Is there a lesion in the left lung? <think>A bright round spot lies in the left upper "
          "field.</think><answer>yes</answer>", "What imaging modality is this? magnetic resonance "
          "imaging MRI CT computed tomography X-ray radiograph ultrasound"] * 5


@pytest.fixture(scope="module")
def tiny():
    tokenizer = M.build_tiny_tokenizer(CORPUS, vocab_size=400)
    processor = P.VLProcessor(tokenizer, P.stock_image_processor(None, min_pixels=56 * 56, max_pixels=112 * 112))
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(M.tiny_config(tokenizer))
    return model.eval(), processor


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(112, 112), (84, 140), (112, 56)]
    return [Image.fromarray((rng.random((sizes[i % 3][1], sizes[i % 3][0], 3)) * 255).astype(np.uint8))
            for i in range(n)]


def test_tiny_model_is_small_qwen25vl(tiny):
    model, processor = tiny
    n = sum(p.numel() for p in model.parameters())
    assert 2e5 < n < 5e6
    assert model.config.model_type == "qwen2_5_vl"
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for tag in P.THINK_ANSWER_TOKENS:  # one token each
        assert len(processor.tokenizer(tag, add_special_tokens=False)["input_ids"]) == 1


def test_prompts_are_left_padded_with_one_token_per_merged_patch(tiny):
    _, processor = tiny
    batch = processor.prompts(["Is this an MRI?", "What imaging modality is this examination?"], images(2))
    ids, att, grid = batch["input_ids"], batch["attention_mask"], batch["image_grid_thw"]
    assert grid.tolist() == [[1, 8, 8], [1, 10, 6]]          # (t, h, w): 140 high x 84 wide -> 10x6
    image_id = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (ids == image_id).sum(1).tolist() == [16, 15]     # 64/4 and 60/4 merged patches
    assert batch["pixel_values"].shape == (64 + 60, 3 * 2 * 14 * 14)
    shorter = int(att.sum(1).argmin())
    assert att[shorter, 0] == 0 and att[shorter, -1] == 1    # padding on the left
    assert (ids[shorter][att[shorter] == 0] == processor.pad_token_id).all()
    assert processor.tokenizer.decode(ids[0]).endswith("<|im_start|>assistant\n")


def test_training_batch_labels_only_the_target(tiny):
    _, processor = tiny
    target = "<think>A bright spot.</think><answer>yes</answer>"
    batch = processor.training_batch(["Is there a lesion?", "Is this an MRI scan of the head?"],
                                     images(2), [target, target])
    for row in range(2):
        labelled = batch["input_ids"][row][batch["labels"][row] != -100]
        assert processor.tokenizer.decode(labelled) == target + "<|im_end|>"
    assert (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_a_batch_of_one_size_gets_the_stock_processors_pixels(tiny, tmp_path):
    """_same_size_pixels (a lookup table and one reshape for the batch) gives the stock PIL image
    processor's pixel values to the bit, under the tiny model's settings and under others; it
    leaves the torchvision processor (where torchvision is installed) to its stock path."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    _, processor = tiny
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)) for _ in range(3)]
    ramp = Image.fromarray(np.arange(112 * 112, dtype=np.uint8).reshape(112, 112)).convert("RGB")  # every value
    processor.image_processor.save_pretrained(tmp_path / "tiny")
    tiny_pil = Qwen2VLImageProcessorPil.from_pretrained(tmp_path / "tiny")   # the tiny model's settings, PIL
    other = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2, min_pixels=56 * 56,
                                     max_pixels=112 * 112, image_mean=[0.2, 0.4, 0.6], image_std=[0.1, 0.3, 0.9])
    other.save_pretrained(tmp_path / "other")
    if type(processor.image_processor) is not Qwen2VLImageProcessorPil:                 # torchvision's
        assert P._same_size_pixels(processor.image_processor, [ramp]) is None
    for image_processor in (tiny_pil, Qwen2VLImageProcessorPil.from_pretrained(tmp_path / "other")):
        for batch in (noise + [ramp], [ramp], images(2)[:1] * 2,
                      [Image.fromarray(rng.integers(0, 256, (84, 56, 3), dtype=np.uint8))] * 2):
            pixels, grid = P._same_size_pixels(image_processor, batch)
            stock = image_processor(images=batch, return_tensors="pt")
            assert pixels.dtype == stock["pixel_values"].dtype == torch.float32
            assert torch.equal(pixels, stock["pixel_values"]) and torch.equal(grid, stock["image_grid_thw"])
    assert P._same_size_pixels(tiny_pil, images(2)) is None                           # two sizes
    assert P._same_size_pixels(tiny_pil, [Image.new("RGB", (100, 100))]) is None      # resized
    pixels, grid = processor._images(images(2))                                         # the stock path
    stock = processor.image_processor(images=images(2), return_tensors="pt")
    assert torch.equal(pixels, stock["pixel_values"]) and grid.tolist() == [[1, 8, 8], [1, 10, 6]]


def test_completion_mask_runs_to_first_eos_inclusive():
    eos, pad = 2, 0
    ids = torch.tensor([[5, 7, eos, pad], [5, eos, 9, eos], [5, 6, 7, 8], [eos, pad, pad, pad]])
    expected = [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert policy.completion_mask(ids, [eos]).tolist() == expected
    # pad id equal to EOS must not matter: the mask comes from the first EOS only
    assert policy.completion_mask(torch.tensor([[5, eos, eos, eos]]), [eos]).tolist() == [[1, 1, 0, 0]]


def stock_token_types(model, input_ids):
    """mm_token_type_ids as transformers' own Qwen2-VL processor builds them (image 1, video 2)."""
    return ((input_ids == model.config.image_token_id).int()
            + 2 * (input_ids == model.config.video_token_id).int())


def test_image_tokens_get_3d_positions(tiny):
    model, processor = tiny
    batch = processor.prompts(["Is there a lesion?", "What imaging modality is this examination?"], images(2))
    assert torch.equal(batch["mm_token_type_ids"], stock_token_types(model, batch["input_ids"]))
    positions, _ = model.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                              batch["image_grid_thw"], attention_mask=batch["attention_mask"])
    image = batch["mm_token_type_ids"][1].bool()        # the 140 x 84 image: 5 x 3 merged tokens
    t, h, w = positions[:, 1, image]
    start = int(t[0])
    assert (t == start).all()
    assert h.tolist() == [start + i for i in range(5) for _ in range(3)]
    assert w.tolist() == [start + j for _ in range(5) for j in range(3)]
    text_after = positions[:, 1, int(image.nonzero().max()) + 1]   # <|vision_end|> after the image
    assert text_after.tolist() == [start + 5] * 3       # text resumes after max(h, w) = 5 positions


def test_prompt_logits_and_greedy_tokens_equal_a_stock_forward(tiny):
    model, processor = tiny
    prompts = processor.prompts(["Is there a lesion?", "What imaging modality is this?"], images(2, seed=3))
    stock = dict(input_ids=prompts["input_ids"], attention_mask=prompts["attention_mask"],
                 pixel_values=prompts["pixel_values"], image_grid_thw=prompts["image_grid_thw"])
    with torch.no_grad():
        ours = model(**prompts).logits
        theirs = model(**stock, mm_token_type_ids=stock_token_types(model, stock["input_ids"])).logits
        one_d = model(**stock).logits                    # what the project ran before: 1-D positions
    assert (ours - theirs).abs().max() < 1e-4
    assert (ours - one_d).abs().max() > 1e-3             # so the positions are not a no-op here
    out = policy.sample_completions(model, processor, prompts, greedy=True, max_new_tokens=12)
    with torch.no_grad():
        ids = model.generate(**stock, mm_token_type_ids=stock_token_types(model, stock["input_ids"]),
                             do_sample=False, max_new_tokens=12, pad_token_id=processor.pad_token_id,
                             eos_token_id=processor.eos_token_ids,
                             suppress_tokens=policy.vision_token_ids(model.config))
    assert torch.equal(out.ids, ids[:, prompts["input_ids"].shape[1]:])


def test_completion_logprobs_equal_direct_full_computation(tiny):
    model, processor = tiny
    prompts = processor.prompts(["Is there a lesion?", "What imaging modality is this?"], images(2, seed=1))
    torch.manual_seed(1)
    out = policy.sample_completions(model, processor, prompts, num_samples=3, temperature=0.9, max_new_tokens=10)
    assert out.ids.shape[0] == 6
    rep = policy.repeat_prompts(prompts, 3)
    logps = policy.completion_logprobs(model, rep, out.ids, out.mask, temperature=0.9, chunk_size=4)
    ids = torch.cat([rep["input_ids"], out.ids], 1)
    with torch.no_grad():   # transformers' own forward, 3-D positions from its own token types
        full = model(input_ids=ids, attention_mask=torch.cat([rep["attention_mask"], out.mask], 1),
                     mm_token_type_ids=stock_token_types(model, ids),
                     pixel_values=rep["pixel_values"], image_grid_thw=rep["image_grid_thw"]).logits
    P = rep["input_ids"].shape[1]
    full[..., policy.vision_token_ids(model.config)] = float("-inf")
    direct = torch.log_softmax(full[:, P - 1:-1].float() / 0.9, -1)
    direct = direct.gather(2, out.ids.unsqueeze(-1)).squeeze(-1) * out.mask
    assert (logps - direct).abs().max() < 1e-4

def test_completion_logprobs_match_the_sampler(tiny):
    """The sampler's own temperature-scaled scores give the same log-probs: alignment, grouping
    (repeat_prompts order = generate's num_return_sequences order) and temperature all agree."""
    model, processor = tiny
    prompts = policy.to_device(processor.prompts(["Is there a lesion?", "Is this a CT?"], images(2, seed=2)),
                          model.device)
    torch.manual_seed(2)
    gen = model.generate(**prompts, max_new_tokens=8, do_sample=True, temperature=0.7, top_k=0,
                         top_p=1.0, num_return_sequences=2, output_scores=True,
                         return_dict_in_generate=True, eos_token_id=processor.eos_token_ids,
                         suppress_tokens=policy.vision_token_ids(model.config),
                         pad_token_id=processor.pad_token_id)
    ids = gen.sequences[:, prompts["input_ids"].shape[1]:]
    mask = policy.completion_mask(ids, processor.eos_token_ids)
    sampler = torch.stack([torch.log_softmax(s.float(), -1) for s in gen.scores], 1)
    sampler = sampler.gather(2, ids.unsqueeze(-1)).squeeze(-1) * mask
    with torch.no_grad():
        ours = policy.completion_logprobs(model, policy.repeat_prompts(prompts, 2), ids, mask, temperature=0.7)
    assert torch.allclose(ours, sampler, atol=1e-4)


def test_gradients_reach_the_model_through_logprobs(tiny):
    model, processor = tiny
    prompts = processor.prompts(["Is there a lesion?"], images(1))
    words = processor.tokenizer("yes no", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([words + [processor.tokenizer.eos_token_id] + words])
    mask = policy.completion_mask(ids, processor.eos_token_ids)
    model.zero_grad()
    policy.completion_logprobs(model, prompts, ids, mask).sum().backward()
    assert model.lm_head.weight.grad.abs().sum() > 0
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_checkpoint_reloads_with_plain_transformers_and_same_answers(tiny, tmp_path):
    model, processor = tiny
    path = str(tmp_path / "ckpt")
    save_checkpoint(model, processor, path, trainer_state={"step": 7}, meta={"step": 7})
    assert load_trainer_state(path)["step"] == 7
    plain = Qwen2_5_VLForConditionalGeneration.from_pretrained(path)
    assert AutoTokenizer.from_pretrained(path).get_vocab() == processor.tokenizer.get_vocab()
    reloaded, reprocessor = M.load_model(path, device="cpu")
    batch = processor.prompts(["Is there a lesion?", "What imaging modality is this?"], images(2, seed=3))
    answers = [policy.sample_completions(m, p, batch, greedy=True, max_new_tokens=12).texts
               for m, p in [(model, processor), (plain, processor), (reloaded, reprocessor)]]
    assert answers[0] == answers[1] == answers[2]


def test_interrupted_save_keeps_previous_checkpoint(tiny, tmp_path, monkeypatch):
    model, processor = tiny
    path = str(tmp_path / "ckpt")
    save_checkpoint(model, processor, path, trainer_state={"step": 1})

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(processor, "save_pretrained", broken)
    with pytest.raises(OSError):
        save_checkpoint(model, processor, path, trainer_state={"step": 2})
    assert load_trainer_state(path)["step"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]          # no temporary directory left behind


def test_save_refuses_to_replace_a_directory_that_is_not_a_checkpoint(tiny, tmp_path):
    model, processor = tiny
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a checkpoint"):
        save_checkpoint(model, processor, str(tmp_path))
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_sampler_draws_the_tokens_generate_draws_for_a_seed(tiny):
    """sample_completions repeats generate's ops in generate's order (suppress vision tokens,
    temperature, top-p, softmax, torch.multinomial; pad after EOS; stop when all rows ended):
    from one torch seed both draw the same tokens and leave the generator in the same state."""
    model, processor = tiny
    prompts = processor.prompts(["Is there a lesion?", "What imaging modality is this?"], images(2, seed=4))
    for top_p in (1.0, 0.8):
        torch.manual_seed(5)
        ours = policy.sample_completions(model, processor, prompts, num_samples=3, temperature=1.3, top_p=top_p,
                                    max_new_tokens=16)
        after_ours = torch.rand(3)
        torch.manual_seed(5)
        with torch.no_grad():
            theirs = model.generate(**prompts, do_sample=True, temperature=1.3, top_p=top_p, top_k=0,
                                    num_return_sequences=3, max_new_tokens=16, repetition_penalty=1.0,
                                    eos_token_id=processor.eos_token_ids, pad_token_id=processor.pad_token_id,
                                    suppress_tokens=policy.vision_token_ids(model.config))
        assert torch.equal(ours.ids, theirs[:, prompts["input_ids"].shape[1]:])
        assert torch.equal(after_ours, torch.rand(3))
        assert len(set(map(tuple, ours.ids.tolist()))) > 1        # the draws differ: it is sampling


def test_a_sampler_kept_in_lockstep_draws_what_it_draws_alone(tiny):
    """Under torchrun with sharded weights a process whose rows are done keeps running forwards
    until every process is (all_done False): its completions and generator state after are those
    it gets alone. Every 4th token ends a completion here, so the rows end early."""
    model, processor = tiny
    processor = copy.copy(processor)
    processor.eos_token_ids = list(range(3, 200, 4))
    prompts = processor.prompts(["Is there a lesion?", "What imaging modality is this?"], images(2, seed=6))
    runs = []
    for all_done in (None, lambda done: False):
        torch.manual_seed(7)
        out = policy.sample_completions(model, processor, prompts, num_samples=3, temperature=1.0,
                                        max_new_tokens=40, all_done=all_done)
        runs.append((out, torch.rand(3)))
    (alone, after_alone), (kept, after_kept) = runs
    assert alone.ids.shape[1] < 40 and len(set(alone.mask.sum(1).tolist())) > 1   # ended early, unequal
    assert torch.equal(alone.ids, kept.ids) and torch.equal(alone.mask, kept.mask) and alone.texts == kept.texts
    assert torch.equal(after_alone, after_kept)


def test_sampler_logprobs_equal_completion_logprobs(tiny, monkeypatch):
    """The sampler/learner check: the log-probs the sampler drew its tokens with (read off the
    distributions it hands torch.multinomial) are those the loss computes (prefill + cache in both,
    but batched differently), to 1e-5."""
    model, processor = tiny
    prompts = processor.prompts(["Is there a lesion?", "Is this a CT?"], images(2, seed=6))
    drawn_from, multinomial = [], torch.multinomial

    def recording_multinomial(probs, num_samples):
        token = multinomial(probs, num_samples)
        drawn_from.append(probs.gather(1, token).squeeze(1).log())                 # (N,)
        return token
    monkeypatch.setattr(torch, "multinomial", recording_multinomial)
    torch.manual_seed(6)
    out = policy.sample_completions(model, processor, prompts, num_samples=4, temperature=0.7, max_new_tokens=20)
    sampler = torch.stack(drawn_from, dim=1) * out.mask                              # (N, T), 0 past EOS
    with torch.no_grad():
        learner = policy.completion_logprobs(model, policy.repeat_prompts(prompts, 4), out.ids, out.mask, temperature=0.7)
    assert out.mask.sum(1).min() > 1 and (sampler[out.mask.bool()] < 0).all()
    assert (sampler - learner).abs().max() < 1e-5


def test_shared_image_and_prompt_passes_give_the_gradients_of_the_repeated_form(tiny):
    """policy_update's form: the vision tower once per image (gradient summed over micro-batches that
    mix prompts, one tower backward) and each prompt's cache shared by its rows, against every row
    run whole (own vision pass, own prompt: gradient checkpointing forces the whole-sequence path)."""
    import copy
    model, processor = tiny
    model = copy.deepcopy(model).train()
    prompts = policy.repeat_prompts(processor.prompts(["Is there a lesion?", "Is this a CT?"], images(2, seed=7)), 3)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(20, 300, (6, 9), generator=g)
    ids[torch.arange(6), torch.tensor([8, 3, 5, 2, 7, 4])] = processor.eos_token_ids[0]
    mask = policy.completion_mask(ids, processor.eos_token_ids)
    weights = torch.randn(6, 9, generator=g)           # a loss that weighs every token differently
    params = [p for p in model.parameters()]

    model.zero_grad()
    features = policy.ImageFeatures(model, prompts, accumulate=True)
    shared = torch.zeros(6, 9)
    for rows in ([0, 4, 2], [1, 5, 3]):                  # each micro-batch holds rows of both prompts
        logps = policy.completion_logprobs(model, policy.select_prompts(prompts, rows), ids[rows], mask[rows],
                                      temperature=0.7, images=features.rows(rows))
        (logps * weights[rows]).sum().backward()
        shared[rows] = logps.detach()
    features.backward()
    shared_grads = [p.grad.clone() for p in params]

    model.zero_grad()
    model.activation_checkpointing_enable()
    repeated = {k: v for k, v in prompts.items() if k != "prompt_index"}   # every row its own image and prompt
    logps = policy.completion_logprobs(model, repeated, ids, mask, temperature=0.7)
    (logps * weights).sum().backward()
    assert (logps.detach() - shared).abs().max() < 1e-5
    largest = max(p.grad.abs().max().item() for p in params)
    for p, expected in zip(params, shared_grads):
        assert (p.grad - expected).abs().max() <= 1e-5 * largest
    assert model.model.visual.patch_embed.proj.weight.grad.abs().sum() > 0


def test_the_initial_std_scales_the_same_draws():
    """pretrain.py --init-std: the tiny model's random weights from the same seed, drawn with another
    std (model.TINY_INIT_STD by default); norms stay 1 and biases 0."""
    default, _ = M.load_model("tiny", device="cpu", seed=3)
    wide, _ = M.load_model("tiny", device="cpu", seed=3, init_std=2 * M.TINY_INIT_STD)
    assert default.config.text_config.initializer_range == M.TINY_INIT_STD == 0.02
    assert wide.config.vision_config.initializer_range == wide.config.text_config.initializer_range == 0.04
    a, b = default.state_dict(), wide.state_dict()
    for name in ("model.visual.patch_embed.proj.weight", "model.visual.blocks.0.attn.qkv.weight",
                 "model.language_model.embed_tokens.weight", "model.language_model.layers.2.mlp.down_proj.weight"):
        assert torch.equal(b[name], 2 * a[name]), name
    assert torch.equal(b["model.visual.blocks.0.norm1.weight"], a["model.visual.blocks.0.norm1.weight"])
    assert 0.039 < b["model.language_model.layers.0.self_attn.q_proj.weight"].std() < 0.041
