"""The policy's two operations on a prompt batch (processor.VLProcessor.prompts): drawing completions
and scoring their per-token log-probs, which must agree (test_model.py checks they do to 1e-5).

    completions = sample_completions(model, processor, batch, num_samples=8, temperature=0.7)
    logps = completion_logprobs(model, repeat_prompts(batch, 8), completions.ids, completions.mask,
                                temperature=0.7)

Both run the vision tower once per distinct image (ImageFeatures) and each distinct prompt once
(prefill), whatever the number of completions that share them.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling


def vision_token_ids(config):
    """Image/video placeholder ids: never sampled, since a completion holding one would no
    longer match the pixel values when it is scored."""
    return [config.image_token_id, config.video_token_id, config.vision_start_token_id,
            config.vision_end_token_id]


def to_device(batch, device):
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def completion_mask(ids, eos_token_ids):
    """1 for every token up to and including the first EOS, 0 after; never read from pad ids.

    ids (N, T) -> mask (N, T). A row with no EOS (cut at max_new_tokens) is all ones.
        ids  = [[5, 7, EOS, PAD], [5, EOS, 9, 9]]  ->  [[1, 1, 1, 0], [1, 1, 0, 0]]
    """
    is_eos = torch.isin(ids, torch.as_tensor(eos_token_ids, device=ids.device))
    seen_before = (is_eos.cumsum(dim=1) - is_eos.long()) > 0  # an EOS strictly before this token
    return (~seen_before).long()


@dataclass
class Completions:
    ids: torch.Tensor    # (B*G, T) generated tokens; rows b*G .. b*G+G-1 answer prompt b
    mask: torch.Tensor   # (B*G, T) completion_mask(ids)
    texts: list          # B*G decoded strings, cut at the first EOS

    def select(self, rows):
        """These completions restricted to `rows` (a list or range of row indices)."""
        rows = list(rows)
        return Completions(self.ids[rows], self.mask[rows], [self.texts[i] for i in rows])

    @staticmethod
    def concat(parts, pad_token_id):
        """The rows of several Completions in order, padded to the widest (pad_token_id, mask 0;
        pad_token_id None: parts of one width, nothing to pad)."""
        width = max(p.ids.shape[1] for p in parts)
        if pad_token_id is None and any(p.ids.shape[1] != width for p in parts):
            raise ValueError("Completions.concat: parts of several widths need a pad_token_id")

        def pad(t, value):
            return F.pad(t, (0, width - t.shape[1]), value=value)
        return Completions(torch.cat([pad(p.ids, pad_token_id) for p in parts]),
                           torch.cat([pad(p.mask, 0) for p in parts]), [t for p in parts for t in p.texts])


def top_p_filter(scores, top_p):
    """Nucleus filter: keep the most likely tokens whose probabilities sum to at least top_p,
    set the others to -inf (transformers' TopPLogitsWarper, op for op). scores (N, V).
        probs [0.5, 0.3, 0.15, 0.05], top_p 0.8  ->  keeps the first two (0.5 + 0.3 >= 0.8)
    """
    ascending, order = torch.sort(scores, descending=False)
    cumulative = ascending.softmax(dim=-1).cumsum(dim=-1)                       # (N, V)
    remove = cumulative <= 1 - top_p          # the tail whose mass fits outside the nucleus
    remove[..., -1] = False                   # the most likely token always stays
    return scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))


@torch.no_grad()
def sample_completions(model, processor, batch, num_samples=1, temperature=0.7, top_p=1.0,
                       max_new_tokens=128, greedy=False, all_done=None):
    """Sample `num_samples` completions per prompt (greedy when `greedy`), grouped by prompt.

    A plain key/value-cache loop: the steps of transformers' `generate` with the same ops in the
    same order (so a torch seed draws the same tokens), without its per-token machinery.
      prefill: each image through the vision tower once, each prompt through the language model
        once; the prompt's cache is then copied for its G samples (B rows -> B*G rows);
      each token: last position's logits in fp32 -> vision tokens -inf -> / temperature ->
        top-p filter -> softmax -> torch.multinomial (greedy: argmax); a row that has emitted EOS
        gets pad from then on, and the loop stops when every row has (or at max_new_tokens).
    all_done(done) -> whether to stop, from Runtime.generation: None stops when this process's
    rows are done; under torchrun with sharded weights it waits for every process, and a process
    whose rows are done keeps running forwards, drawing nothing, so its completions are those it
    would sample alone.
    A completion token is text: its (time, height, width) positions all continue one past the
    prompt's largest position, as in Qwen2.5-VL's own generation.

    Every sampling setting is explicit: a checkpoint's generation_config (Qwen2.5-VL ships
    top_k=1, repetition_penalty=1.05) plays no part, so the log-probs of the loss are those of the
    policy that sampled: completion_logprobs computes the log-prob of each drawn token under the
    temperature-scaled distribution before top-p (test_model.py checks it against this sampler's).
    """
    was_training = model.training
    model.eval()
    batch = to_device(batch, model.device)
    B, G = batch["input_ids"].shape[0], num_samples
    eos = torch.as_tensor(processor.eos_token_ids, device=model.device)
    banned = torch.zeros(model.lm_head.out_features, dtype=torch.bool, device=model.device)
    banned[vision_token_ids(model.config)] = True

    cache, last_hidden, next_position = prefill(model, batch, ImageFeatures(model, batch).rows(range(B)))
    cache.batch_repeat_interleave(G)                                  # prompt b's cache for its G samples
    logits = model.lm_head(last_hidden).float().repeat_interleave(G, dim=0)                      # (N, V)
    attention = batch["attention_mask"].repeat_interleave(G, dim=0)                               # (N, P)
    next_position = next_position.repeat_interleave(G)                                            # (N,)
    unfinished = torch.ones_like(next_position, dtype=torch.bool)
    done = not unfinished.any()
    tokens = []
    for t in range(max_new_tokens):
        if not done:   # else only keeping pace with other processes (all_done)
            scores = logits.masked_fill(banned, float("-inf"))                                   # (N, V)
            if greedy:
                token = scores.argmax(dim=-1)
            else:
                scores = scores / temperature
                kept = top_p_filter(scores, top_p) if top_p < 1 else scores
                token = torch.multinomial(F.softmax(kept, dim=-1), num_samples=1).squeeze(1)     # (N,)
            token = torch.where(unfinished, token, processor.pad_token_id)
            tokens.append(token)
            unfinished &= ~torch.isin(token, eos)
            done = not unfinished.any()
        if (all_done(done) if all_done else done) or t + 1 == max_new_tokens:
            break
        attention = torch.cat([attention, attention.new_ones(len(token), 1)], dim=1)
        position = (next_position + t).view(1, -1, 1).expand(3, -1, 1)                        # (3, N, 1)
        logits = model(input_ids=token[:, None], attention_mask=attention, position_ids=position,
                       cache=cache, use_cache=True).logits[:, -1].float()
    model.train(was_training)
    ids = torch.stack(tokens, dim=1)                                                              # (N, T)
    mask = completion_mask(ids, processor.eos_token_ids)
    texts = [processor.tokenizer.decode(row[m.bool()], skip_special_tokens=True)
             for row, m in zip(ids, mask)]
    return Completions(ids, mask, texts)


def distinct_prompts(prompts):
    """(first, of_row): the first row of each distinct prompt of a batch, and for every row the
    number of its prompt among them. Rows sharing a `prompt_index` (select_prompts) are copies of
    one prompt, its image included; a batch without one has every row distinct.
        prompt_index [4, 4, 4, 9, 9, 9]  ->  first [0, 3], of_row [0, 0, 0, 1, 1, 1]
    """
    index = prompts.get("prompt_index", torch.arange(len(prompts["input_ids"]))).tolist()
    first = {}                                                     # prompt -> first row holding it
    for row, prompt in enumerate(index):
        first.setdefault(prompt, row)
    slot = {prompt: k for k, prompt in enumerate(first)}
    return list(first.values()), [slot[prompt] for prompt in index]


class ImageFeatures:
    """The vision tower's output for the images of a prompt batch, each distinct image once.

    The G completions of a prompt show one image (repeat_prompts gives their rows one
    `prompt_index`), so the tower runs once per image and every row reads its image's features:
    in the sampler's prefill and in every log-prob pass, G times less vision work.

    accumulate=True, for a training step split into micro-batches: the language-model passes read
    a detached copy of the features, each pass's backward adds its gradient to that copy, and
    backward() then runs the tower's backward once with the sum. The chain rule is linear in the
    incoming gradient, so the tower's gradients are those of running it for every row.
        rows 0-7 show image 0, rows 8-15 image 1; micro-batches {0, 9, 3}, {8, 1, 15}, ...
        each backward adds d loss / d features of its rows to the copy's grad; backward(): one
        tower backward for the whole step. The tower's activations live until then (those of
        the batch's distinct images, not of every row).
    """

    def __init__(self, model, prompts, accumulate=False):
        grid = prompts["image_grid_thw"]
        rows, self._slot_of_row = distinct_prompts(prompts)
        pixels = torch.split(prompts["pixel_values"], grid.prod(dim=1).tolist())
        # the model's own method (not model.model.visual), which FSDP and autocast wrap: distributed.py
        out = model.get_image_features(torch.cat([pixels[r] for r in rows]).to(model.device),
                                       grid[rows].to(model.device))
        features = torch.cat(out.pooler_output)                      # (tokens of the distinct images, H)
        self._tower_output = self._copy = None
        if accumulate and features.requires_grad:
            self._tower_output, features = features, features.detach().requires_grad_()
            self._copy = features
        self._per_image = features.split([len(f) for f in out.pooler_output])

    def rows(self, rows):
        """The features of each of `rows` (rows of the batch this was built from): a list."""
        return [self._per_image[self._slot_of_row[r]] for r in rows]

    def backward(self):
        """accumulate=True: the tower's backward, once, with the gradient the passes summed."""
        if self._copy is not None and self._copy.grad is not None:
            self._tower_output.backward(self._copy.grad)
            self._tower_output = self._copy = None


def select_prompts(batch, rows):
    """The prompt batch restricted to `rows` (any order, repeats allowed), pixel values included.

    pixel_values stacks every image's patches (sum of t*h*w rows); they are split per image,
    picked, and stacked again, so image i's patches always travel with prompt i. prompt_index
    (N,) says which image of the original batch each row shows: rows picked from the same
    prompt share it, and ImageFeatures runs the vision tower once for them.
    """
    grid = batch["image_grid_thw"]
    pixels = torch.split(batch["pixel_values"], grid.prod(dim=1).tolist())
    rows = torch.as_tensor(rows, dtype=torch.long)
    prompt_index = batch.get("prompt_index", torch.arange(len(grid)))
    return dict(input_ids=batch["input_ids"][rows], attention_mask=batch["attention_mask"][rows],
                mm_token_type_ids=batch["mm_token_type_ids"][rows],
                pixel_values=torch.cat([pixels[i] for i in rows.tolist()]), image_grid_thw=grid[rows],
                prompt_index=prompt_index[rows])


def repeat_prompts(batch, times):
    """Each prompt `times` times in a row (p0,p0,…,p1,p1,…), the order of grouped completions."""
    n = batch["input_ids"].shape[0]
    return select_prompts(batch, torch.arange(n).repeat_interleave(times))


def prefill(model, prompts, images):
    """Each distinct prompt of a batch through the language model once; its key/value cache then
    serves every row that continues it (the G completions of a prompt).

    prompts: N rows, rows with one `prompt_index` being copies of one prompt (repeat_prompts);
    images: the N rows' image features (ImageFeatures.rows). Returns, one row per row of prompts:
        cache        the prompts' keys and values, (N, heads, P, d) per layer
        last_hidden  (N, H) final hidden state of the prompt's last position (predicts token 0)
        next_position (N,) position of the first completion token: one past the prompt's largest
                     (time, height, width) position, the same for all three (a text token)
    """
    rows, of_row = distinct_prompts(prompts)
    ids, attention = prompts["input_ids"][rows], prompts["attention_mask"][rows]                   # (D, P)
    positions, _ = model.model.get_rope_index(ids, prompts["mm_token_type_ids"][rows],
                                              prompts["image_grid_thw"][rows], attention_mask=attention)  # (3, D, P)
    out = model(input_ids=ids, attention_mask=attention, position_ids=positions, use_cache=True,
                mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=[images[r] for r in rows])},
                output_hidden_states=True, logits_to_keep=1)
    of_row = torch.tensor(of_row, device=ids.device)                                              # (N,)
    cache = out.cache
    cache.batch_select_indices(of_row)
    return cache, out.hidden_states[-1][of_row, -1], positions.amax(dim=(0, 2))[of_row] + 1


def completion_logprobs(model, prompts, completion_ids, mask, temperature=1.0, chunk_size=4, images=None):
    """Per-token log-probs of the completion tokens under `model`: (N, T), zero where mask is 0.

    prompts: a prompt batch with N rows (use repeat_prompts for G samples per prompt);
    completion_ids, mask: (N, T). Each distinct prompt runs through the model once (prefill) and
    its completions continue from its key/value cache, as in sampling; the vocabulary
    projection and log-softmax run only on the T positions that predict completion tokens, a
    few rows at a time, recomputed in backward (checkpointed), so the (N, T, V) logits tensor is
    never held whole. Logits are divided by the sampling temperature, as in sampling.

    Completion tokens are text (mm_token_type_ids 0): image tokens keep their 3-D positions and
    the completion continues the text positions, exactly as in generation.

    images: the N rows' image features (ImageFeatures.rows), when the caller shares them between
    passes; by default ImageFeatures of `prompts`, each distinct image through the tower once.

    Alignment: the prompt's last hidden state predicts completion token 0, the completion's
    hidden state at t predicts token t+1, so
        [last_hidden, hidden[:, 0 : T-1]]  ->  logits for completion_ids[:, 0:T]
    (no torch.roll: rolling would wrap the last logit onto the first token).
    A model that recomputes activations in backward (gradient checkpointing) keeps no cache
    while training, so there the whole prompt + completion runs for every row.
    """
    prompts = to_device(prompts, model.device)
    N, T = completion_ids.shape
    if images is None:
        images = ImageFeatures(model, prompts).rows(range(N))
    attention = torch.cat([prompts["attention_mask"], mask.to(prompts["attention_mask"])], dim=1)   # (N, P+T)
    if torch.is_grad_enabled() and any(layer.gradient_checkpointing for layer in model.model.language_model.layers):
        P = prompts["input_ids"].shape[1]
        types = torch.cat([prompts["mm_token_type_ids"], torch.zeros_like(completion_ids, dtype=torch.int)], dim=1)
        # The model's own forward (not model.model), so that a sharded model gathers its weights the
        # usual way; logits_to_keep=1 skips the vocabulary projection of all but one position, and
        # hidden_states[-1] is the final (normed) hidden state that lm_head reads.
        out = model(input_ids=torch.cat([prompts["input_ids"], completion_ids], dim=1), attention_mask=attention,
                    mm_token_type_ids=types, use_cache=False, image_grid_thw=prompts["image_grid_thw"],
                    mm_encoder_outputs={"image": BaseModelOutputWithPooling(pooler_output=images)},
                    output_hidden_states=True, logits_to_keep=1)
        hidden = out.hidden_states[-1][:, P - 1:P - 1 + T]                                        # (N, T, H)
    else:
        cache, last_hidden, next_position = prefill(model, prompts, images)
        position = (next_position[:, None] + torch.arange(T, device=next_position.device)).expand(3, N, T)
        out = model(input_ids=completion_ids, attention_mask=attention, position_ids=position,
                    cache=cache, output_hidden_states=True, logits_to_keep=1)
        hidden = torch.cat([last_hidden[:, None], out.hidden_states[-1][:, :T - 1]], dim=1)       # (N, T, H)

    banned = vision_token_ids(model.config)  # the sampler suppresses them: same policy here

    def token_logps(h, ids):
        logits = model.lm_head(h).float() / temperature                              # (n, T, V)
        logits[..., banned] = float("-inf")
        return torch.gather(F.log_softmax(logits, dim=-1), 2, ids.unsqueeze(-1)).squeeze(-1)

    chunks = []
    for start in range(0, hidden.shape[0], chunk_size):
        h, ids = hidden[start:start + chunk_size], completion_ids[start:start + chunk_size]
        if torch.is_grad_enabled():
            chunks.append(torch.utils.checkpoint.checkpoint(token_logps, h, ids, use_reentrant=False))
        else:
            chunks.append(token_logps(h, ids))
    return torch.cat(chunks) * mask                                                  # (N, T)
