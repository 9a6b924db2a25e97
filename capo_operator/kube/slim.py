"""The few typed calls the operator makes, without `kubernetes.aio`'s generated API classes.

Each generated class wraps every one of its methods in a pydantic `validate_call` when its module
is imported: `CoreV1Api` alone (about a thousand methods) costs ~25 MB of memory and
`AdmissionregistrationV1Api` ~5 MB, for the dozen methods used here. These stand-ins build the same
requests through the same `ApiClient` (`param_serialize`, `call_api`, `response_deserialize`): the
same credentials, 401 retry and 403 logging (`access.ObservedApiClient`), the same models
returned and the same `ApiException` raised. The method names and signatures are the generated
ones, so a call site reads as before.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, cast

from kubernetes.aio import client as k8s

JSON = "application/json"
T = TypeVar("T")


class _Api:
    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.api_client = api_client

    async def _call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        returns: type[T],
        body: Any = None,
        content_type: str | None = None,
        query: Sequence[tuple[str, str]] = (),
    ) -> T:
        response = await self.api_client.call_api(
            *await self._request(method, path, params, body, content_type, query)
        )
        await response.read()
        # Any 2xx is read as `returns`; anything else raises ApiException (as the generated code).
        types = {"2XX": returns.__name__}
        return cast(
            T, self.api_client.response_deserialize(response_data=response, response_types_map=types).data
        )

    async def _request(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        body: Any = None,
        content_type: str | None = None,
        query: Sequence[tuple[str, str]] = (),
    ) -> Any:
        headers = {"Accept": JSON}
        if body is not None:
            headers["Content-Type"] = content_type or JSON
        return await self.api_client.param_serialize(
            method=method,
            resource_path=path,
            path_params=dict(params),
            query_params=list(query),
            header_params=headers,
            body=body,
            post_params=[],
            files={},
            auth_settings=["BearerToken"],
            collection_formats={},
        )


def _list_query(
    field_selector: str | None, resource_version: str | None, timeout_seconds: int | None, watch: bool | None
) -> list[tuple[str, str]]:
    query = [("fieldSelector", field_selector), ("resourceVersion", resource_version)]
    query += [("timeoutSeconds", None if timeout_seconds is None else str(timeout_seconds))]
    query += [("watch", None if watch is None else str(watch).lower())]
    return [(k, v) for k, v in query if v is not None]


class CoreV1(_Api):
    """The `CoreV1Api` methods the operator uses."""

    async def read_namespace(self, name: str) -> k8s.V1Namespace:
        return await self._call("GET", "/api/v1/namespaces/{name}", {"name": name}, k8s.V1Namespace)

    async def read_namespaced_pod(self, name: str, namespace: str) -> k8s.V1Pod:
        path = "/api/v1/namespaces/{namespace}/pods/{name}"
        return await self._call("GET", path, {"name": name, "namespace": namespace}, k8s.V1Pod)

    async def read_namespaced_config_map(self, name: str, namespace: str) -> k8s.V1ConfigMap:
        path = "/api/v1/namespaces/{namespace}/configmaps/{name}"
        return await self._call("GET", path, {"name": name, "namespace": namespace}, k8s.V1ConfigMap)

    async def create_namespaced_config_map(self, namespace: str, body: Any) -> k8s.V1ConfigMap:
        path = "/api/v1/namespaces/{namespace}/configmaps"
        return await self._call("POST", path, {"namespace": namespace}, k8s.V1ConfigMap, body)

    async def replace_namespaced_config_map(self, name: str, namespace: str, body: Any) -> k8s.V1ConfigMap:
        path = "/api/v1/namespaces/{namespace}/configmaps/{name}"
        return await self._call("PUT", path, {"name": name, "namespace": namespace}, k8s.V1ConfigMap, body)

    async def delete_namespaced_config_map(self, name: str, namespace: str) -> k8s.V1Status:
        path = "/api/v1/namespaces/{namespace}/configmaps/{name}"
        return await self._call("DELETE", path, {"name": name, "namespace": namespace}, k8s.V1Status)

    async def list_namespaced_config_map(
        self,
        namespace: str,
        *,
        field_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int | None = None,
        watch: bool | None = None,
    ) -> k8s.V1ConfigMapList:
        """The ConfigMaps of a namespace; `kubernetes.aio.watch.Watch` streams it through
        `list_namespaced_config_map_without_preload_content` (and reads the item type here).

        :rtype: V1ConfigMapList
        """
        path = "/api/v1/namespaces/{namespace}/configmaps"
        query = _list_query(field_selector, resource_version, timeout_seconds, watch)
        return await self._call("GET", path, {"namespace": namespace}, k8s.V1ConfigMapList, query=query)

    async def list_namespaced_config_map_without_preload_content(
        self,
        namespace: str,
        *,
        field_selector: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int | None = None,
        watch: bool | None = None,
    ) -> Any:
        """The raw response (an aiohttp response: a watch is read line by line from it)."""
        path = "/api/v1/namespaces/{namespace}/configmaps"
        query = _list_query(field_selector, resource_version, timeout_seconds, watch)
        request = await self._request("GET", path, {"namespace": namespace}, query=query)
        method, url, headers, body, post = request
        response = await self.api_client.call_api(method, url, headers, body, post, _preload_content=False)
        return response.response

    async def read_namespaced_secret(self, name: str, namespace: str) -> k8s.V1Secret:
        path = "/api/v1/namespaces/{namespace}/secrets/{name}"
        return await self._call("GET", path, {"name": name, "namespace": namespace}, k8s.V1Secret)

    async def create_namespaced_secret(self, namespace: str, body: Any) -> k8s.V1Secret:
        path = "/api/v1/namespaces/{namespace}/secrets"
        return await self._call("POST", path, {"namespace": namespace}, k8s.V1Secret, body)

    async def replace_namespaced_secret(self, name: str, namespace: str, body: Any) -> k8s.V1Secret:
        path = "/api/v1/namespaces/{namespace}/secrets/{name}"
        return await self._call("PUT", path, {"name": name, "namespace": namespace}, k8s.V1Secret, body)


class AdmissionregistrationV1(_Api):
    """The `AdmissionregistrationV1Api` methods the operator uses."""

    PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/{name}"
    MUTATING = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/{name}"

    async def read_validating_webhook_configuration(self, name: str) -> k8s.V1ValidatingWebhookConfiguration:
        return await self._call("GET", self.PATH, {"name": name}, k8s.V1ValidatingWebhookConfiguration)

    async def patch_validating_webhook_configuration(
        self, name: str, body: Any, _content_type: str | None = None
    ) -> k8s.V1ValidatingWebhookConfiguration:
        return await self._call(
            "PATCH", self.PATH, {"name": name}, k8s.V1ValidatingWebhookConfiguration, body, _content_type
        )

    async def read_mutating_webhook_configuration(self, name: str) -> k8s.V1MutatingWebhookConfiguration:
        return await self._call("GET", self.MUTATING, {"name": name}, k8s.V1MutatingWebhookConfiguration)

    async def patch_mutating_webhook_configuration(
        self, name: str, body: Any, _content_type: str | None = None
    ) -> k8s.V1MutatingWebhookConfiguration:
        return await self._call(
            "PATCH", self.MUTATING, {"name": name}, k8s.V1MutatingWebhookConfiguration, body, _content_type
        )


class AuthorizationV1(_Api):
    """The `AuthorizationV1Api` method the operator uses (its start-up permission check)."""

    async def create_self_subject_access_review(self, body: Any) -> k8s.V1SelfSubjectAccessReview:
        path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews"
        return await self._call("POST", path, {}, k8s.V1SelfSubjectAccessReview, body)


class AppsV1(_Api):
    """The `AppsV1Api` reads the releaser makes (does a pod's owner still exist?)."""

    async def _read(self, plural: str, returns: type[T], name: str, namespace: str) -> T:
        path = f"/apis/apps/v1/namespaces/{{namespace}}/{plural}/{{name}}"
        return await self._call("GET", path, {"name": name, "namespace": namespace}, returns)

    async def read_namespaced_stateful_set(self, name: str, namespace: str) -> k8s.V1StatefulSet:
        return await self._read("statefulsets", k8s.V1StatefulSet, name, namespace)

    async def read_namespaced_deployment(self, name: str, namespace: str) -> k8s.V1Deployment:
        return await self._read("deployments", k8s.V1Deployment, name, namespace)

    async def read_namespaced_daemon_set(self, name: str, namespace: str) -> k8s.V1DaemonSet:
        return await self._read("daemonsets", k8s.V1DaemonSet, name, namespace)

    async def read_namespaced_replica_set(self, name: str, namespace: str) -> k8s.V1ReplicaSet:
        return await self._read("replicasets", k8s.V1ReplicaSet, name, namespace)
