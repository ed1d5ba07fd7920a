"""POST /v1/rerank: Jina's and Cohere's request (`query`, `documents` as strings or `{"text"}`
objects, `top_n`, `return_documents`), with llama-server's `texts` for `documents`.

The response is theirs too (`results` sorted by `relevance_score`, best first, each with the
document's `index` in the request), plus `method`: how the scores were made, which tells how
to read them ("cosine": an embedding model's cosine similarity, in [-1, 1]; "rank": a
reranker model's classification head, a raw logit).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nexa.errors import InvalidRequest
from nexa.schemas.common import KeepAlive, RequestModel, ResponseModel


class DocumentIn(RequestModel):
    text: str


class RerankRequest(RequestModel):
    model: str | None = None
    query: str | None = Field(None, description="The text the documents are ranked against (required).")
    documents: list[str | DocumentIn] | None = Field(
        None, description="The texts to rank: strings, or objects with `text` (required, at least one)."
    )
    texts: list[str] | None = Field(None, description="llama-server's name for `documents` (plain strings).")
    top_n: int | None = Field(None, description="Return only the best N results (default: all).")
    return_documents: bool = Field(False, description="Give each result its document's text.")
    truncate: bool = Field(
        True, description="Cut a document longer than the model reads (false: refuse it with a 400)."
    )
    keep_alive: KeepAlive = None

    def checked(self, max_documents: int) -> tuple[str, list[str]]:
        """The query and the documents' texts; a 400 naming the field for anything missing or
        out of bounds, before any model is loaded."""
        if self.query is None or not self.query.strip():
            raise InvalidRequest("'query' is required: the text to rank the documents against.", param="query")
        given = self.documents if self.documents is not None else self.texts
        if given is None:
            raise InvalidRequest("'documents' is required: a list of texts to rank.", param="documents")
        if not given:
            raise InvalidRequest("'documents' is empty: send at least one text to rank.", param="documents")
        if len(given) > max_documents:
            raise InvalidRequest(
                f"'documents' has {len(given)} items; at most {max_documents} are allowed per request "
                "(--max-embedding-inputs).",
                param="documents",
                code="too_many_inputs",
            )
        texts = [d if isinstance(d, str) else d.text for d in given]
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidRequest(f"documents[{i}] is empty: send some text.", param="documents")
        if self.top_n is not None and self.top_n < 1:
            raise InvalidRequest(f"'top_n' must be at least 1, not {self.top_n}.", param="top_n")
        return self.query, texts


class DocumentOut(ResponseModel):
    text: str


class RankedDocument(ResponseModel):
    index: int = Field(description="The document's position in the request's `documents`.")
    relevance_score: float
    document: DocumentOut | None = Field(default=None, description="With `return_documents`.")


class RerankUsage(ResponseModel):
    prompt_tokens: int
    total_tokens: int


class RerankResponse(ResponseModel):
    object: Literal["list"] = "list"
    model: str
    method: Literal["cosine", "rank"] = Field(
        description="cosine: cosine similarity of embeddings, in [-1, 1]; rank: a reranker model's raw score."
    )
    results: list[RankedDocument] = Field(description="Best first; `top_n` of them when given.")
    usage: RerankUsage
