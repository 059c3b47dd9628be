"""A small synchronous client for AdminService (projects, API keys, the
audit log), on a MediaJobsClient's channel, key and deadline.

    from mediajobs.client import MediaJobsClient
    from mediajobs.client.admin import AdminClient

    with MediaJobsClient("127.0.0.1:50051", api_key=admin_key) as c:
        admin = AdminClient(c)
        admin.create_project("acme", display_name="ACME")
        made = admin.create_api_key("acme", "editor", name="ci")
        print(made.key)          # shown once

Every method raises `MediaJobsError` when the call fails.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator, TypeVar

import grpc

from mediajobs.v1 import admin_service_pb2 as asvc
from mediajobs.v1 import admin_service_pb2_grpc as asvc_grpc

from .client import MediaJobsClient
from .errors import MediaJobsError

Project = asvc.Project
ApiKey = asvc.ApiKey
AuditEntry = asvc.AuditEntry

_Resp = TypeVar("_Resp")


class AdminClient:
    def __init__(self, client: MediaJobsClient) -> None:
        self.client = client
        self.stub = asvc_grpc.AdminServiceStub(client.channel)

    def _call(self, method: Callable[..., _Resp], request: Any) -> _Resp:
        try:
            return method(request, timeout=self.client.timeout)
        except grpc.RpcError as e:
            raise MediaJobsError.from_rpc_error(e) from None

    # -- projects ----------------------------------------------------------------------

    def create_project(self, name: str, *, display_name: str = "", description: str = "") -> Project:
        req = asvc.CreateProjectRequest(project=Project(name=name, display_name=display_name,
                                                        description=description))
        return self._call(self.stub.CreateProject, req)

    def get_project(self, name: str) -> Project:
        return self._call(self.stub.GetProject, asvc.GetProjectRequest(name=name))

    def iter_projects(self, *, page_size: int = 0) -> Iterator[Project]:
        token = ""
        while True:
            page = self._call(self.stub.ListProjects, asvc.ListProjectsRequest(page_size=page_size,
                                                                              page_token=token))
            yield from page.projects
            token = page.next_page_token
            if not token:
                return

    def delete_project(self, name: str, *, force: bool = False) -> asvc.DeleteProjectResponse:
        return self._call(self.stub.DeleteProject, asvc.DeleteProjectRequest(name=name, force=force))

    # -- API keys ------------------------------------------------------------------------

    def create_api_key(self, project: str, role: str, *, name: str = "") -> asvc.CreateApiKeyResponse:
        """A new key; the response's `key` is the key text, shown once."""
        return self._call(self.stub.CreateApiKey, asvc.CreateApiKeyRequest(project=project, role=role, name=name))

    def iter_api_keys(self, *, project: str = "", include_revoked: bool = False, page_size: int = 0
                      ) -> Iterator[ApiKey]:
        token = ""
        while True:
            page = self._call(self.stub.ListApiKeys, asvc.ListApiKeysRequest(
                project=project, include_revoked=include_revoked, page_size=page_size, page_token=token))
            yield from page.api_keys
            token = page.next_page_token
            if not token:
                return

    def revoke_api_key(self, key_id: str) -> ApiKey:
        return self._call(self.stub.RevokeApiKey, asvc.RevokeApiKeyRequest(id=key_id))

    # -- audit log -----------------------------------------------------------------------

    def list_audit_entries(self, *, project: str = "", page_size: int = 0, page_token: str = ""
                           ) -> asvc.ListAuditEntriesResponse:
        return self._call(self.stub.ListAuditEntries, asvc.ListAuditEntriesRequest(
            project=project, page_size=page_size, page_token=page_token))

    def iter_audit_entries(self, *, project: str = "", page_size: int = 0) -> Iterator[AuditEntry]:
        """Newest first."""
        token = ""
        while True:
            page = self.list_audit_entries(project=project, page_size=page_size, page_token=token)
            yield from page.entries
            token = page.next_page_token
            if not token:
                return
