"""Arrow schemas of the real Hugging Face datasets the pipeline reads.

The tiny world is written in exactly these schemas and the loaders validate against them, so
tiny and real data pass through one code path.
"""

from __future__ import annotations

import pyarrow as pa

TURN_SHAREGPT = pa.struct([("from", pa.string()), ("value", pa.string())])
TURN_CHAT = pa.struct([("content", pa.string()), ("role", pa.string())])

OPENTHOUGHTS = pa.schema([  # open-thoughts/OpenThoughts3-1.2M
    ("difficulty", pa.int64()),
    ("source", pa.string()),
    ("domain", pa.string()),
    ("conversations", pa.list_(TURN_SHAREGPT)),
])

DAPO = pa.schema([  # BytedTsinghua-SIA/DAPO-Math-17k
    ("data_source", pa.string()),
    ("prompt", pa.list_(TURN_CHAT)),
    ("ability", pa.string()),
    ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
    ("extra_info", pa.struct([("index", pa.string())])),
])

DEEPMATH = pa.schema([  # zwhe99/DeepMath-103K
    ("question", pa.string()),
    ("final_answer", pa.string()),
    ("difficulty", pa.float64()),
    ("topic", pa.string()),
    ("r1_solution_1", pa.string()),
    ("r1_solution_2", pa.string()),
    ("r1_solution_3", pa.string()),
])

AIME24 = pa.schema([  # HuggingFaceH4/aime_2024
    ("id", pa.int64()),
    ("problem", pa.string()),
    ("solution", pa.string()),
    ("answer", pa.string()),
    ("url", pa.string()),
    ("year", pa.string()),
])

AIME25 = pa.schema([  # math-ai/aime25
    ("problem", pa.string()),
    ("answer", pa.string()),
    ("id", pa.string()),
])

AMC23 = pa.schema([  # math-ai/amc23
    ("id", pa.int64()),
    ("question", pa.string()),
    ("answer", pa.string()),
])

BENCHMARKS = {"aime24": AIME24, "aime25": AIME25, "amc23": AMC23}

# An SFT set as SFT trainers read it (LlamaFactory's sharegpt formatting with role/content
# tags): the chat in ``messages``, with the id of its prompt. filter_rollouts writes it from
# teacher rollouts, fetch_released from the released cold-start set.
SFT_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
SFT_SET = pa.schema([("prompt_id", pa.int64()), ("messages", pa.list_(SFT_MESSAGE))])

# DAPO-Math-17k wraps every problem in this instruction (prefix + problem + suffix).
DAPO_PREFIX = (
    "Solve the following math problem step by step. The last line of your response should be "
    "of the form Answer: $Answer (without quotes) where $Answer is the answer to the problem."
    "\n\n"
)
DAPO_SUFFIX = '\n\nRemember to put your answer on its own line after "Answer:".'
