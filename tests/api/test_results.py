"""What a job produced, read through the API: samples, pseudo-labels with statistics, checkpoints and their
download, evaluations, training curves, events and the SSE stream. Rows are written the way the runner
writes them (``store.jobs.bulk_upsert``)."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from pathlib import Path

import pytest

from twofold.store import jobs as ops
from twofold.store.artifacts import ArtifactStore, dir_digest
from twofold.store.models import (
    Checkpoint,
    Evaluation,
    Job,
    MetricPoint,
    RewardLabel,
    StudentSampleRow,
    TeacherSampleRow,
)

pytestmark = pytest.mark.services


def _job(api) -> tuple[str, uuid.UUID]:
    job = api.create_job(api.a)
    return job["id"], uuid.UUID(job["id"])


def test_samples_by_source_and_question(api) -> None:
    jid, job_id = _job(api)
    with api.db() as s:
        teacher = [
            {
                "job_id": job_id,
                "question_id": f"q{i % 4}",
                "temperature": 0.7,
                "index": i // 4,
                "text": f"t{i}",
                "answer": str(i),
            }
            for i in range(12)
        ]
        ops.bulk_upsert(
            s, TeacherSampleRow, teacher, conflict=("job_id", "question_id", "temperature", "index")
        )
        ops.bulk_upsert(
            s,
            StudentSampleRow,
            [{"job_id": job_id, "question_id": "q0", "index": 0, "text": "s", "answer": None}],
            conflict=("job_id", "question_id", "index"),
        )
        s.commit()
    url = f"/v1/jobs/{jid}/samples"
    seen, after = [], None
    while True:
        page = api.client.get(
            url, headers=api.a, params={"limit": 5, **({"after": after} if after else {})}
        ).json()
        seen += page["data"]
        if not page["has_more"]:
            break
        after = page["data"][-1]["id"]
    assert len(seen) == 12 and len({x["id"] for x in seen}) == 12
    assert {x["source"] for x in seen} == {"teacher"} and seen[0]["object"] == "sample"
    q1 = api.client.get(url, headers=api.a, params={"question_id": "q1"}).json()["data"]
    assert sorted(x["text"] for x in q1) == ["t1", "t5", "t9"]
    student = api.client.get(url, headers=api.a, params={"source": "student"}).json()["data"]
    assert [(x["source"], x["temperature"], x["text"]) for x in student] == [("student", None, "s")]
    assert api.client.get(url, headers=api.a, params={"source": "oracle"}).status_code == 422


def test_reward_labels_with_summary(api) -> None:
    jid, job_id = _job(api)
    rows = []
    # q0: agreement 0.75, three agree one not; q1: agreement 0.5, one of two agrees
    for seq, (q, label, agreement) in enumerate(
        [("q0", 1, 0.75)] * 3 + [("q0", 0, 0.75), ("q1", 1, 0.5), ("q1", 0, 0.5)]
    ):
        rows.append(
            {
                "job_id": job_id,
                "seq": seq,
                "question_id": q,
                "source": "teacher",
                "index": seq,
                "text": "x",
                "answer": "1" if label else "2",
                "majority": "1",
                "label": label,
                "agreement": agreement,
            }
        )
    with api.db() as s:
        ops.bulk_upsert(s, RewardLabel, rows)
        s.get(Job, job_id).label_stats = {"questions_total": 5, "accuracy_vs_gold": 0.8}  # type: ignore[union-attr]
        s.commit()
    body = api.client.get(f"/v1/jobs/{jid}/reward-labels", headers=api.a, params={"limit": 4}).json()
    assert body["has_more"] and [x["question_id"] for x in body["data"]] == ["q0"] * 4
    summary = body["summary"]
    assert (summary["questions_total"], summary["questions_kept"], summary["questions_dropped"]) == (5, 2, 3)
    assert (summary["labels"], summary["positive"], summary["negative"]) == (6, 4, 2)
    assert summary["positive_rate"] == pytest.approx(4 / 6) and summary["mean_agreement"] == pytest.approx(
        0.625
    )
    counts = {h["bin_start"]: h["count"] for h in summary["agreement_histogram"]}
    assert counts[0.5] == 1 and counts[0.7] == 1 and sum(counts.values()) == 2
    assert summary["accuracy_vs_gold"] == 0.8


def test_checkpoints_list_and_download(api, tmp_path: Path) -> None:
    jid, job_id = _job(api)
    src = tmp_path / "sft"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "llama"}')
    (src / "model.safetensors").write_bytes(b"\x00" * 1000)
    key = ArtifactStore.checkpoint_key(job_id, "sft", "policy", 7)
    ArtifactStore(api.settings.artifacts_url).put_dir(src, key)
    size, sha = dir_digest(src)
    with api.db() as s:
        row = Checkpoint(
            job_id=job_id, stage="sft", kind="policy", step=7, uri=key, size_bytes=size, sha256=sha
        )
        gone = Checkpoint(
            job_id=job_id,
            stage="rl",
            kind="policy",
            step=1,
            uri=f"jobs/{job_id}/checkpoints/gone",
            size_bytes=1,
            sha256="0" * 64,
        )
        evil = Checkpoint(
            job_id=job_id,
            stage="rl",
            kind="policy",
            step=2,
            uri="../../../../etc",
            size_bytes=1,
            sha256="0" * 64,
        )
        s.add_all([row, gone, evil])
        s.commit()
    listed = api.client.get(f"/v1/jobs/{jid}/checkpoints", headers=api.a).json()["data"]
    assert [(c["stage"], c["step"], c["size_bytes"], c["sha256"]) for c in listed][0] == ("sft", 7, size, sha)
    r = api.client.get(listed[0]["download_url"], headers=api.a)
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    assert f'filename="{jid}-sft-policy-7.tar.gz"' in r.headers["content-disposition"]
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        assert sorted(tar.getnames()) == ["sft-policy-7/config.json", "sft-policy-7/model.safetensors"]
    for bad in (gone, evil):
        missing = api.client.get(f"/v1/jobs/{jid}/checkpoints/{bad.id}/download", headers=api.a)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    other = _job(api)[0]
    assert api.client.get(f"/v1/jobs/{other}/checkpoints/{row.id}/download", headers=api.a).status_code == 404


def test_evaluations_and_metrics(api) -> None:
    jid, job_id = _job(api)
    with api.db() as s:
        s.add(
            Evaluation(
                job_id=job_id,
                model="rl",
                benchmark="arithmetic",
                accuracy=0.6,
                ci_low=0.5,
                ci_high=0.7,
                n=100,
                extraction_version="1",
            )
        )
        points = [
            {"job_id": job_id, "stage": st, "step": i, "name": "loss", "value": 1.0 / (i + 1)}
            for st in ("sft", "rl")
            for i in range(3)
        ]
        ops.bulk_upsert(
            s, MetricPoint, points, conflict=("job_id", "stage", "step", "name"), update_columns=("value",)
        )
        ops.bulk_upsert(
            s,
            MetricPoint,
            [dict(points[0], value=9.0)],
            conflict=("job_id", "stage", "step", "name"),
            update_columns=("value",),
        )
        s.commit()
    ev = api.client.get(f"/v1/jobs/{jid}/evaluations", headers=api.a).json()["data"]
    assert [(e["object"], e["model"], e["accuracy"], e["ci95"], e["n"]) for e in ev] == [
        ("evaluation", "rl", 0.6, [0.5, 0.7], 100)
    ]
    sft = api.client.get(f"/v1/jobs/{jid}/metrics", headers=api.a, params={"stage": "sft"}).json()
    assert [(m["step"], m["value"]) for m in sft["data"]] == [(0, 9.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert not sft["has_more"]
    assert len(api.client.get(f"/v1/jobs/{jid}/metrics", headers=api.a).json()["data"]) == 6


def test_events_list_and_stream(api) -> None:
    jid, job_id = _job(api)
    with api.db() as s:
        for i in range(3):
            ops.append_event(
                s, job_id, type="stage.progress", message=f"step {i}", stage="sft", data={"i": i}
            )
        s.commit()
    page = api.client.get(f"/v1/jobs/{jid}/events", headers=api.a, params={"limit": 2}).json()
    assert [e["seq"] for e in page["data"]] == [1, 2] and page["has_more"]
    rest = api.client.get(
        f"/v1/jobs/{jid}/events", headers=api.a, params={"after": page["data"][-1]["id"]}
    ).json()
    assert [e["seq"] for e in rest["data"]] == [3, 4]
    by_seq = api.client.get(f"/v1/jobs/{jid}/events", headers=api.a, params={"after": "3"}).json()
    assert [e["seq"] for e in by_seq["data"]] == [4]
    api.client.post(f"/v1/jobs/{jid}/cancel", headers=api.a)  # the job finishes, so the stream ends
    stream = api.client.get(
        f"/v1/jobs/{jid}/events", headers={**api.a, "Last-Event-ID": "2"}, params={"stream": "true"}
    )
    assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
    messages = [m for m in stream.text.split("\n\n") if m.strip()]
    fields = [dict(line.split(": ", 1) for line in m.splitlines()) for m in messages]
    assert [f.get("id") for f in fields[:-1]] == ["3", "4", "5", "6"]
    assert fields[0]["event"] == "stage.progress" and json.loads(fields[0]["data"])["data"] == {"i": 1}
    assert [f["event"] for f in fields[-3:]] == ["job.cancel_requested", "job.cancelled", "end"]
    bad = api.client.get(
        f"/v1/jobs/{jid}/events", headers={**api.a, "Last-Event-ID": "abc"}, params={"stream": "true"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "Last-Event-ID"
