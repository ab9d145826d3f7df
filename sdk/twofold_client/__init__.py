"""twofold_client: the Python client of the twofold distillation service.

from twofold_client import Client

client = Client(base_url="http://localhost:8080", api_key="tf_...")
job = client.jobs.create(preset="smoke")
job = client.jobs.wait(job.id, on_event=lambda e: print(e.stage, e.message))
print(job.status, job.summary)
"""

from ._base_client import DEFAULT_MAX_RETRIES, DEFAULT_RECONNECT_TIMEOUT, DEFAULT_TIMEOUT, RequestOptions
from ._client import AsyncClient, Client
from ._exceptions import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    InternalServerError,
    JobWaitTimeout,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    TwofoldError,
    UnprocessableEntityError,
    UnsafeArchiveError,
)
from ._streaming import AsyncEventStream, EventStream, ServerSentEvent, SSEDecoder
from ._version import __version__
from .pagination import AsyncPage, AsyncPaginator, AsyncRewardLabelPage, RewardLabelPage, SyncPage
from .types import (
    Checkpoint,
    Dataset,
    Evaluation,
    Event,
    Job,
    JobError,
    MetricPoint,
    Preset,
    RewardLabel,
    RewardLabelSummary,
    Sample,
    StageRun,
)

__all__ = [
    "__version__",
    "Client",
    "AsyncClient",
    "DEFAULT_TIMEOUT",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_RECONNECT_TIMEOUT",
    "RequestOptions",
    "TwofoldError",
    "APIError",
    "APIStatusError",
    "BadRequestError",
    "AuthenticationError",
    "PermissionDeniedError",
    "NotFoundError",
    "ConflictError",
    "PayloadTooLargeError",
    "UnprocessableEntityError",
    "RateLimitError",
    "InternalServerError",
    "APIConnectionError",
    "APITimeoutError",
    "JobWaitTimeout",
    "UnsafeArchiveError",
    "EventStream",
    "AsyncEventStream",
    "ServerSentEvent",
    "SSEDecoder",
    "SyncPage",
    "AsyncPage",
    "AsyncPaginator",
    "RewardLabelPage",
    "AsyncRewardLabelPage",
    "Checkpoint",
    "Dataset",
    "Evaluation",
    "Event",
    "Job",
    "JobError",
    "MetricPoint",
    "Preset",
    "RewardLabel",
    "RewardLabelSummary",
    "Sample",
    "StageRun",
]
