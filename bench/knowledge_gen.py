"""A generated knowledge base for the retrieval benchmark: documents of random English and Chinese words."""

from __future__ import annotations

import random

_ENGLISH = (
    "agent voice stream token latency server engine audio clip channel user model answer question knowledge "
    "document retrieval search index network socket buffer chunk request response error timeout retry upstream "
    "gateway proxy cache memory disk file folder admin operator dashboard chart log record filter table page "
    "browser cookie token secret key header body field value number string list object array map queue worker "
    "thread process signal shutdown grace health check metric counter gauge histogram percentile throughput"
).split()
_CHINESE = "声网对话式智能体语音模型知识库检索文档音频片段管理后台日志请求响应错误超时重试网络服务器引擎延迟"


def generate_documents(count: int, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    documents = []
    for n in range(count):
        words = [rng.choice(_ENGLISH) + (str(rng.randrange(500)) if rng.random() < 0.3 else "") for _ in range(60)]
        chinese = "".join(rng.choice(_CHINESE) for _ in range(30)) if n % 5 == 0 else ""
        documents.append(
            {"id": f"doc-{n}", "title": " ".join(words[:5]), "content": " ".join(words[5:]) + " " + chinese}
        )
    return documents


def generate_queries(count: int, seed: int = 11) -> list[str]:
    rng = random.Random(seed)
    queries = []
    for n in range(count):
        if n % 4 == 0:
            queries.append("".join(rng.choice(_CHINESE) for _ in range(8)))
        else:
            queries.append(" ".join(rng.choice(_ENGLISH) + str(rng.randrange(500)) for _ in range(6)))
    return queries
