"""Text codecs: how a conversation becomes one training sequence, and generated ids text.

Both codecs lay a sample out the same way, so training, evaluation and the FLOP count share one path:

    prefix ids | IMAGE x V | prompt ids | answer ids [| next prompt ids | next answer ids ...]
    loss only on the answer ids (labels elsewhere are IGNORE)

A conversation of several turns is one sequence, as LLaVA trains it: the image once, every answer
supervised. `sequence` returns it with one IMAGE marker per image (one, as LLaVA trains; several for a
question about several images, as lmms-eval's LLaVA puts them: "<image> <image>\n{question}"), each of
which the batch widens to V placeholders; a text-only conversation (images=0) has no marker and no visual
tokens, as LLaVA trains one.

* `WordTokenizer` (the synthetic grid): a word vocabulary built from the data; no prefix, the prompt is
  the question's words, the answer is one word (greedy decoding stops after one token).
* `ChatTokenizer` (Hugging Face LMs): the LM's own `AutoTokenizer` and chat template. The first user turn
  is "<image>\\n{question}"; the conversation is rendered by the template turn by turn (each prompt with
  the generation prompt added), the image placeholder splits off the prefix, and each answer is
  supervised with the end-of-turn token the template closes it with, which is also where greedy
  decoding stops.
"""

from __future__ import annotations

import torch

SPECIALS = ("<pad>", "<unk>")
IMAGE = -200  # placeholder id: replaced by the V projected visual tokens (LLaVA's IMAGE_TOKEN_INDEX)
IGNORE = -100  # label of every position that is not part of an answer


class WordTokenizer:
    max_new_tokens = 1
    pad_id = 0
    eos_id = None

    def __init__(self, words: list[str]):
        self.vocab = list(SPECIALS) + sorted(set(words) - set(SPECIALS))
        self.index = {w: i for i, w in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(w, 1) for w in text.split()]

    def answer_id(self, answer: str) -> int:
        ids = self.encode(answer)
        if len(ids) != 1:
            raise ValueError(f"answers must be one word on the synthetic grid, got {answer!r}")
        return ids[0]

    def question_ids(self, question: str) -> list[int]:
        return self.encode(question)

    def sequence(self, conversation, images: int = 1) -> tuple[list[int], list[int]]:
        """(ids, labels) of a conversation, its images' IMAGE markers first: each question's words, then
        its answer."""
        ids, labels = [IMAGE] * images, [IGNORE] * images
        for question, answer in conversation:
            prompt = self.encode(question)
            ids += prompt + [self.answer_id(answer)]
            labels += [IGNORE] * len(prompt) + [ids[-1]]
        return ids, labels

    def decode(self, ids: list[int]) -> str:
        return " ".join(self.vocab[i] for i in ids)


class ChatTokenizer:
    """A Hugging Face tokenizer with its chat template (Qwen's ChatML for the paper's grid)."""

    max_new_tokens = None  # as the evaluation configures it

    def __init__(self, source: str):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(source)
        if not self.tok.chat_template:
            raise ValueError(
                f"the tokenizer of {source!r} has no chat template; name one that has (e.g. the "
                f"chat variant's) in llms[].tokenizer, or add a chat_template to its tokenizer_config.json"
            )
        self.eos_id = (
            self.tok.convert_tokens_to_ids("<|im_end|>")
            if "<|im_end|>" in self.tok.get_vocab()
            else self.tok.eos_token_id
        )
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.eos_id

    def __len__(self) -> int:
        return len(self.tok)

    def _ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def question_ids(self, question: str) -> list[int]:
        return self._ids(question) or [self.pad_id]

    def _render(self, messages: list[dict], prompt: bool) -> str:
        return self.tok.apply_chat_template(messages, add_generation_prompt=prompt, tokenize=False)

    def sequence(self, conversation, images: int = 1) -> tuple[list[int], list[int]]:
        """(ids, labels) of a conversation rendered by the chat template, an IMAGE marker where the
        template puts each image (none for a text-only one); labels on each answer and the end-of-turn
        token that closes it."""
        ids, labels, rendered, messages = [], [], "", []
        for k, (question, answer) in enumerate(conversation):
            first = k == 0 and images
            messages.append(
                {"role": "user", "content": " ".join(["<image>"] * images) + f"\n{question}" if first else question}
            )
            prompt = self._render(messages, prompt=True)
            messages.append({"role": "assistant", "content": answer})
            reply = self._reply(self._render(messages, prompt=False), prompt, rendered, k)
            first, *after_images = prompt[len(rendered) :].split("<image>")
            prompt_ids = self._ids(first) + [i for piece in after_images for i in [IMAGE, *self._ids(piece)]]
            reply_ids = self._ids(reply)
            ids += prompt_ids + reply_ids
            labels += [IGNORE] * len(prompt_ids) + reply_ids
            rendered = prompt + reply
        return ids, labels

    def _reply(self, closed: str, prompt: str, rendered: str, turn: int) -> str:
        """The assistant's text up to and including its end-of-turn token."""
        eos = self.tok.convert_ids_to_tokens(self.eos_id)
        if not (prompt.startswith(rendered) and closed.startswith(prompt) and eos in closed[len(prompt) :]):
            raise ValueError(f"the chat template does not render turn {turn + 1} as a continuation of the ones before")
        return closed[len(prompt) : closed.index(eos, len(prompt)) + len(eos)]

    def decode(self, ids: list[int]) -> str:
        if self.eos_id in ids:
            ids = ids[: ids.index(self.eos_id)]
        return self.tok.decode(ids, skip_special_tokens=True).strip()


def build_tokenizer(llm_spec: dict, vocabulary: list[str]):
    """The synthetic grid's word tokenizer for LMs built from a config; the LM's own tokenizer otherwise."""
    if llm_spec.get("source", "config") == "config":
        return WordTokenizer(vocabulary)
    return ChatTokenizer(llm_spec.get("tokenizer") or llm_spec["source"])


def pad_right(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded on the right to the longest, as one tensor, and their lengths. The rows are padded as
    lists and converted once: a tensor per row costs more than the training step of a tiny model."""
    lengths = [len(r) for r in rows]
    width = max(lengths)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)
    return ids, torch.tensor(lengths)
