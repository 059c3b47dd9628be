"""Peewee models: the schema. Every table carries `project`.

A job row keeps the columns that filters, ordering and leasing need, plus
`data`, the serialized mediajobs.v1.Job, which is authoritative for the rest.
"""
from __future__ import annotations

import time
from typing import Any

import peewee



class BaseModel(peewee.Model):
    """Unbound models; `bind_models(db)` gives each Store its own bound copies,
    so several stores (SQLite and PostgreSQL, old and restarted) can be open
    in one process."""

    class Meta:
        legacy_table_names = False


class JobRow(BaseModel):
    id = peewee.CharField(max_length=26, primary_key=True)
    project = peewee.CharField(max_length=64)
    type = peewee.CharField(max_length=64)
    state = peewee.SmallIntegerField()
    priority = peewee.SmallIntegerField()
    creator = peewee.CharField(max_length=128)
    create_time = peewee.BigIntegerField()
    update_time = peewee.BigIntegerField()
    start_time = peewee.BigIntegerField(default=0)
    end_time = peewee.BigIntegerField(default=0)
    revision = peewee.BigIntegerField()
    # Leasing (WorkerService): who holds the job, until when, with what token.
    lease_token = peewee.CharField(max_length=64, default="")
    lease_owner = peewee.CharField(max_length=256, default="")
    lease_expire_time = peewee.BigIntegerField(default=0)
    # A PENDING job is not leased before this time (retry backoff).
    available_time = peewee.BigIntegerField(default=0)
    data = peewee.BlobField()

    class Meta:
        table_name = "jobs"
        indexes = (
            (("state", "lease_expire_time"), False),
            (("project", "id"), False),
            (("project", "state", "type", "id"), False),
            (("project", "type", "id"), False),
            (("project", "state", "priority", "id"), False),
            (("project", "creator", "id"), False),
            (("project", "create_time", "id"), False),
            (("project", "start_time", "id"), False),
            (("project", "end_time", "id"), False),
        )


class JobMetadataRow(BaseModel):
    job_id = peewee.CharField(max_length=26)
    project = peewee.CharField(max_length=64)
    key = peewee.CharField(max_length=128)
    value = peewee.TextField()

    class Meta:
        table_name = "job_metadata"
        primary_key = peewee.CompositeKey("job_id", "key")
        indexes = ((("project", "key", "value", "job_id"), False),)


class JobEventRow(BaseModel):
    revision = peewee.BigIntegerField(primary_key=True)
    project = peewee.CharField(max_length=64)
    job_id = peewee.CharField(max_length=26)
    # What watch filters match on, so a resuming watcher reads only its events.
    job_type = peewee.CharField(max_length=64)
    state = peewee.SmallIntegerField()
    previous_state = peewee.SmallIntegerField()
    event_time = peewee.BigIntegerField()
    # Serialized mediajobs.v1.JobEvent (a tombstone after the job is deleted).
    data = peewee.BlobField()

    class Meta:
        table_name = "job_events"
        indexes = (
            (("job_id", "revision"), False),
            (("job_type", "revision"), False),
        )


class JobProblemRow(BaseModel):
    id = peewee.CharField(max_length=26, primary_key=True)
    project = peewee.CharField(max_length=64)
    job_id = peewee.CharField(max_length=26)
    reason = peewee.CharField(max_length=64)
    message = peewee.TextField()
    details = peewee.TextField(default="{}")  # JSON object of strings
    create_time = peewee.BigIntegerField()
    resolved = peewee.BooleanField(default=False)

    class Meta:
        table_name = "job_problems"
        indexes = (
            (("project", "resolved", "id"), False),
            (("job_id", "id"), False),
        )


class JobTypeRow(BaseModel):
    project = peewee.CharField(max_length=64)
    name = peewee.CharField(max_length=64)

    class Meta:
        table_name = "job_types"
        primary_key = peewee.CompositeKey("project", "name")


class IdempotencyRow(BaseModel):
    project = peewee.CharField(max_length=64)
    method = peewee.CharField(max_length=64)
    request_id = peewee.CharField(max_length=128)
    request_hash = peewee.CharField(max_length=64)
    response = peewee.BlobField()
    create_time = peewee.BigIntegerField(index=True)

    class Meta:
        table_name = "idempotency_keys"
        primary_key = peewee.CompositeKey("project", "method", "request_id")


class MetaRow(BaseModel):
    """Store-wide counters: `revision` (last committed), `compact_revision`
    (everything at or below it has been removed from job_events), `probe`
    (rewritten by the server's health probe, a write that changes nothing)
    and `bulk_upload_number` (the last BulkUpload.number handed out). Markers of
    one-off work: `payload_check_version` (store/sanitize.py) and
    `projects_registered` (create_schema)."""

    key = peewee.CharField(max_length=64, primary_key=True)
    value = peewee.BigIntegerField()

    class Meta:
        table_name = "store_meta"


class EntryRow(BaseModel):
    """A media entry; `data` is the serialized mediajobs.v1.Entry."""

    id = peewee.CharField(max_length=26, primary_key=True)
    project = peewee.CharField(max_length=64)
    state = peewee.SmallIntegerField()
    reference_id = peewee.CharField(max_length=256, default="")
    template_id = peewee.CharField(max_length=64, default="")
    create_time = peewee.BigIntegerField()
    update_time = peewee.BigIntegerField()
    data = peewee.BlobField()

    class Meta:
        table_name = "entries"
        indexes = (
            (("project", "id"), False),
            (("project", "state", "id"), False),
            (("project", "reference_id", "id"), False),
            (("project", "template_id", "id"), False),
        )


class EntryTagRow(BaseModel):
    entry_id = peewee.CharField(max_length=26)
    project = peewee.CharField(max_length=64)
    tag = peewee.CharField(max_length=64)

    class Meta:
        table_name = "entry_tags"
        primary_key = peewee.CompositeKey("entry_id", "tag")
        indexes = ((("project", "tag", "entry_id"), False),)


class MediaInfoRow(BaseModel):
    """A media-info record; `data` is the serialized mediajobs.v1.MediaInfo."""

    id = peewee.CharField(max_length=26, primary_key=True)
    project = peewee.CharField(max_length=64)
    entry_id = peewee.CharField(max_length=26)
    flavor_asset_id = peewee.CharField(max_length=26, default="")
    create_time = peewee.BigIntegerField()
    data = peewee.BlobField()

    class Meta:
        table_name = "media_infos"
        indexes = ((("entry_id", "flavor_asset_id", "id"), False), (("entry_id", "id"), False))


class JobTemplateRow(BaseModel):
    """A user-defined job template (built-ins live in code);
    `data` is the serialized mediajobs.v1.JobTemplate."""

    project = peewee.CharField(max_length=64)
    id = peewee.CharField(max_length=64)
    create_time = peewee.BigIntegerField()
    update_time = peewee.BigIntegerField()
    data = peewee.BlobField()

    class Meta:
        table_name = "job_templates"
        primary_key = peewee.CompositeKey("project", "id")


class CuePointRow(BaseModel):
    """A cue point; `data` is the serialized mediajobs.v1.CuePoint. Tags are
    kept in cue_point_tags for filtering."""

    id = peewee.CharField(max_length=26, primary_key=True)
    project = peewee.CharField(max_length=64)
    entry_id = peewee.CharField(max_length=26)
    type = peewee.SmallIntegerField()
    start_time_ms = peewee.BigIntegerField()
    end_time_ms = peewee.BigIntegerField(default=0)
    create_time = peewee.BigIntegerField()
    data = peewee.BlobField()

    class Meta:
        table_name = "cue_points"
        indexes = (
            (("project", "entry_id", "start_time_ms", "id"), False),
            (("project", "type", "entry_id", "start_time_ms", "id"), False),
        )


class CuePointTagRow(BaseModel):
    cue_point_id = peewee.CharField(max_length=26)
    project = peewee.CharField(max_length=64)
    tag = peewee.CharField(max_length=64)

    class Meta:
        table_name = "cue_point_tags"
        primary_key = peewee.CompositeKey("cue_point_id", "tag")
        indexes = ((("project", "tag", "cue_point_id"), False),)


class BulkUploadRow(BaseModel):
    """A CSV bulk upload; `data` is the serialized mediajobs.v1.BulkUpload
    (state and counts included). The columns are what filters, ordering and
    the runner's resume point need."""

    id = peewee.CharField(max_length=26, primary_key=True)
    project = peewee.CharField(max_length=64)
    number = peewee.BigIntegerField(unique=True)
    state = peewee.SmallIntegerField()
    uploaded_by = peewee.CharField(max_length=128, default="")
    create_time = peewee.BigIntegerField()
    update_time = peewee.BigIntegerField()
    # Bytes stored (the sum of its chunks): where a broken write resumes.
    uploaded_bytes = peewee.BigIntegerField(default=0)
    # Where the runner goes on (the first record not applied yet), written
    # in the same transaction as the last applied batch.
    resume_offset = peewee.BigIntegerField(default=0)
    resume_line = peewee.BigIntegerField(default=0)
    resume_index = peewee.BigIntegerField(default=0)
    data = peewee.BlobField()

    class Meta:
        table_name = "bulk_uploads"
        indexes = (
            (("project", "id"), False),
            (("project", "state", "id"), False),
            (("project", "uploaded_by", "id"), False),
        )


class BulkUploadChunkRow(BaseModel):
    """The uploaded file, byte-exact, in the order written: one row per
    WriteBulkUploadFile message."""

    id = peewee.AutoField()
    upload_id = peewee.CharField(max_length=26)
    byte_offset = peewee.BigIntegerField()
    crc32 = peewee.BigIntegerField()
    data = peewee.BlobField()

    class Meta:
        table_name = "bulk_upload_chunks"
        indexes = ((("upload_id", "byte_offset"), True),)


class BulkUploadLineRow(BaseModel):
    """The result of one record; `data` is the serialized
    mediajobs.v1.BulkUploadResult (without row_data: the record's bytes are
    read from the chunks by offset)."""

    upload_id = peewee.CharField(max_length=26)
    record_index = peewee.BigIntegerField()
    status = peewee.SmallIntegerField()
    generation = peewee.IntegerField(default=1)
    data = peewee.BlobField()

    class Meta:
        table_name = "bulk_upload_lines"
        primary_key = peewee.CompositeKey("upload_id", "record_index")
        indexes = ((("upload_id", "status", "record_index"), False),)


class BulkUploadObjectRow(BaseModel):
    """Which record last created or changed an entry, so that the record's
    result follows the entry's processing (store/bulk_uploads.py)."""

    project = peewee.CharField(max_length=64)
    object_id = peewee.CharField(max_length=26)
    upload_id = peewee.CharField(max_length=26)
    record_index = peewee.BigIntegerField()

    class Meta:
        table_name = "bulk_upload_objects"
        primary_key = peewee.CompositeKey("project", "object_id")
        indexes = ((("upload_id", "record_index"), False),)


class LiveJobRow(BaseModel):
    """A live job; `data` is the serialized mediajobs.v1.LiveJob (its stream
    key included: Get shows it). The key is looked up by its sha256
    (`key_hash`), and a reset key's hash stays in `old_key_hash` so that a
    publisher still using it is told so. The text columns are what
    ListLiveJobs' search reads, lowercased."""

    id = peewee.CharField(max_length=26, primary_key=True)
    project = peewee.CharField(max_length=64)
    number = peewee.BigIntegerField(unique=True)
    name = peewee.CharField(max_length=36, unique=True)
    key_hash = peewee.CharField(max_length=64, unique=True)
    old_key_hash = peewee.CharField(max_length=64, default="", index=True)
    backup_key_hash = peewee.CharField(max_length=64, default="", index=True)
    srt_port = peewee.IntegerField(default=0, index=True)
    state = peewee.SmallIntegerField()
    bucket = peewee.CharField(max_length=63)
    destination = peewee.CharField(max_length=256)
    search_text = peewee.TextField(default="")
    current_job_id = peewee.CharField(max_length=26, default="", index=True)
    create_time = peewee.BigIntegerField()
    update_time = peewee.BigIntegerField()
    data = peewee.BlobField()

    class Meta:
        table_name = "live_jobs"
        indexes = (
            (("project", "id"), False),
            (("project", "state", "id"), False),
            (("project", "bucket", "destination"), True),
        )


class LiveOutputRow(BaseModel):
    """One rendition of a live job; `data` is a mediajobs.v1.LiveOutput."""

    live_job_id = peewee.CharField(max_length=26)
    output_id = peewee.IntegerField()
    data = peewee.BlobField()

    class Meta:
        table_name = "live_outputs"
        primary_key = peewee.CompositeKey("live_job_id", "output_id")


class LiveTimingRow(BaseModel):
    """The status log of a live job, append-only; `data` is a
    mediajobs.v1.LiveTiming (its sequence is `id`)."""

    id = peewee.AutoField()
    live_job_id = peewee.CharField(max_length=26)
    output_id = peewee.IntegerField(default=0)
    create_time = peewee.BigIntegerField()
    data = peewee.BlobField()

    class Meta:
        table_name = "live_timings"
        indexes = ((("live_job_id", "id"), False),)


class LiveCallbackRow(BaseModel):
    """A live job's timing waiting to be POSTed to its callback URL (an
    outbox written in the timing's transaction); `data` is the JSON body."""

    id = peewee.AutoField()
    live_job_id = peewee.CharField(max_length=26)
    url = peewee.TextField()
    due_time = peewee.BigIntegerField()
    attempts = peewee.IntegerField(default=0)
    data = peewee.BlobField()

    class Meta:
        table_name = "live_callbacks"
        indexes = ((("due_time", "id"), False), (("live_job_id", "id"), False))


class LiveClipRow(BaseModel):
    """A clip of a live job; `data` is the serialized mediajobs.v1.LiveClip."""

    id = peewee.CharField(max_length=26, primary_key=True)
    project = peewee.CharField(max_length=64)
    live_job_id = peewee.CharField(max_length=26)
    job_id = peewee.CharField(max_length=26, index=True)
    data = peewee.BlobField()

    class Meta:
        table_name = "live_clips"
        indexes = ((("project", "live_job_id", "id"), False),)


class ApiKeyRow(BaseModel):
    """An API key: its secret is stored only as a sha256 (`secret_hash`);
    `data` is nothing secret (name, creator)."""

    id = peewee.CharField(max_length=26, primary_key=True)
    project = peewee.CharField(max_length=64)
    role = peewee.CharField(max_length=16)
    name = peewee.CharField(max_length=128, default="")
    secret_hash = peewee.CharField(max_length=64)
    creator = peewee.CharField(max_length=128, default="")
    create_time = peewee.BigIntegerField()
    last_used_time = peewee.BigIntegerField(default=0)
    revoke_time = peewee.BigIntegerField(default=0)

    class Meta:
        table_name = "api_keys"
        indexes = ((("project", "id"), False),)


class AuditRow(BaseModel):
    """An admin action (projects created and deleted, keys created and
    revoked): who, what, when. Append-only: deleting a project keeps its
    entries."""

    id = peewee.AutoField()
    project = peewee.CharField(max_length=64)
    time = peewee.BigIntegerField()
    actor = peewee.CharField(max_length=128)
    action = peewee.CharField(max_length=64)
    subject = peewee.CharField(max_length=128)
    detail = peewee.TextField(default="")

    class Meta:
        table_name = "audit_log"
        indexes = ((("project", "id"), False),)


class ProjectRow(BaseModel):
    """A project (tenant); the `project` column of every other table names
    one. Store-wide, like store_meta: the one table without a `project`
    column of its own (store/projects.py)."""

    name = peewee.CharField(max_length=64, primary_key=True)
    display_name = peewee.CharField(max_length=256, default="")
    description = peewee.TextField(default="")
    creator = peewee.CharField(max_length=128, default="")
    create_time = peewee.BigIntegerField()

    class Meta:
        table_name = "projects"


ALL_MODELS = [
    JobRow, JobMetadataRow, JobEventRow, JobProblemRow, JobTypeRow, IdempotencyRow, MetaRow,
    EntryRow, EntryTagRow, MediaInfoRow, JobTemplateRow, CuePointRow, CuePointTagRow,
    BulkUploadRow, BulkUploadChunkRow, BulkUploadLineRow, BulkUploadObjectRow,
    LiveJobRow, LiveOutputRow, LiveTimingRow, LiveCallbackRow, LiveClipRow, ApiKeyRow, AuditRow, ProjectRow,
]


class BoundModels:
    """The models bound to one database: `m.JobRow`, `m.JobEventRow`, ..."""

    # Typed as Any: Peewee's query API is dynamic.
    JobRow: Any
    JobMetadataRow: Any
    JobEventRow: Any
    JobProblemRow: Any
    JobTypeRow: Any
    IdempotencyRow: Any
    MetaRow: Any
    EntryRow: Any
    EntryTagRow: Any
    MediaInfoRow: Any
    JobTemplateRow: Any
    CuePointRow: Any
    CuePointTagRow: Any
    BulkUploadRow: Any
    BulkUploadChunkRow: Any
    BulkUploadLineRow: Any
    BulkUploadObjectRow: Any
    LiveJobRow: Any
    LiveOutputRow: Any
    LiveTimingRow: Any
    LiveCallbackRow: Any
    LiveClipRow: Any
    ApiKeyRow: Any
    AuditRow: Any
    ProjectRow: Any

    def __init__(self, db: peewee.Database) -> None:
        self.all: list[Any] = []
        for model in ALL_MODELS:
            meta = type("Meta", (), {"database": db, "table_name": model._meta.table_name})
            bound = type(model.__name__, (model,), {"Meta": meta, "__module__": __name__})
            setattr(self, model.__name__, bound)
            self.all.append(bound)


_bound: dict[int, BoundModels] = {}


def models_for(db: peewee.Database) -> BoundModels:
    m = _bound.get(id(db))
    if m is None or m.JobRow._meta.database is not db:
        m = _bound[id(db)] = BoundModels(db)
    return m


def create_schema(db: peewee.Database, home_project: str = "default") -> None:
    """Create what is missing (tables, indexes, columns added later, the
    store_meta counters) and the home project's row (`home_project`, the
    server's project, cfg.project), so existing databases keep working."""
    m = models_for(db)
    with db.atomic():
        db.create_tables(m.all, safe=True)
        # What AcquireJobs reads: highest priority first, then oldest.
        db.execute_sql(
            "CREATE INDEX IF NOT EXISTS jobs_acquire ON jobs (project, state, type, priority DESC, id)"
        )
        # Columns added after their table first shipped: added in place.
        for model, column, sql_type in ((m.LiveJobRow, "backup_key_hash", "VARCHAR(64) NOT NULL DEFAULT ''"),
                                        (m.LiveJobRow, "srt_port", "INTEGER NOT NULL DEFAULT 0")):
            table = model._meta.table_name
            if column not in {c.name for c in db.get_columns(table)}:
                db.execute_sql(f"ALTER TABLE {table} ADD COLUMN {column} {sql_type}")
                db.execute_sql(f"CREATE INDEX IF NOT EXISTS {table}_{column} ON {table} ({column})")
        for key in ("revision", "compact_revision", "probe", "bulk_upload_number", "live_job_number"):
            m.MetaRow.insert(key=key, value=0).on_conflict_ignore().execute()
        _register_projects(m, home_project)


# Projects found in a database that predates the projects table, and the
# home project, are created by the server itself.
SERVER_CREATOR = "mediajobs-server"


def _register_projects(m: BoundModels, home_project: str) -> None:
    now = int(time.time() * 1_000_000)
    # Once per database (marked by the store_meta key `projects_registered`):
    # every project that already has rows gets its projects row, so a
    # database made before the projects table keeps all of its data
    # manageable (and deletable) through AdminService.
    if m.MetaRow.get_or_none(m.MetaRow.key == "projects_registered") is None:
        found: set[str] = set()
        for model in m.all:
            if "project" in model._meta.fields:
                found.update(p for (p,) in model.select(model.project).distinct().tuples())
        for name in sorted(found):
            m.ProjectRow.insert(name=name, creator=SERVER_CREATOR, create_time=now).on_conflict_ignore().execute()
        m.MetaRow.insert(key="projects_registered", value=1).on_conflict_ignore().execute()
    m.ProjectRow.insert(name=home_project, creator=SERVER_CREATOR, create_time=now).on_conflict_ignore().execute()
