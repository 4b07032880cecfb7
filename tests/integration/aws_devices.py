"""Devices written against the real AWS IoT Device SDKs, one class per SDK, behind one small
asyncio interface so the same flows run on each.

What each class gives its SDK is what a device moving from AWS would change: the endpoint,
the port and the paths of its certificate, key and CA. The rest is the SDKs' own shadow
API (v1's has no named shadows, so a v1 device uses its MQTT connection and AWS's named
shadow topics for those, as the AWS developer guide shows).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from tests.integration.cert_stack import DeviceFiles

ENDPOINT = "localhost"
TIMEOUT_S = 10


class Rejected(Exception):
    """The shadow service answered on `/rejected` (AWS's error document)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Endpoint:
    port: int
    files: DeviceFiles

    @property
    def thing(self) -> str:
        return self.files.device_id


def _state(desired: Any, reported: Any, delta: Any = None) -> dict[str, Any]:
    state = {"desired": desired, "reported": reported, "delta": delta}
    return {key: value for key, value in state.items() if value is not None}


class ShadowDevice(ABC):
    """One device; ``shadow=None`` is the classic shadow, else a named one."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.loop = asyncio.get_running_loop()
        self.deltas: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.interrupted = asyncio.Event()

    def _from_thread(self, future: asyncio.Future[Any], value: Any) -> None:
        def settle() -> None:
            if future.done():
                return
            if isinstance(value, BaseException):
                future.set_exception(value)
            else:
                future.set_result(value)

        self.loop.call_soon_threadsafe(settle)

    def _delta(self, event: dict[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.deltas.put_nowait, event)

    def _cut(self) -> None:
        self.loop.call_soon_threadsafe(self.interrupted.set)

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def get(self, shadow: str | None = None) -> dict[str, Any]: ...

    @abstractmethod
    async def update(
        self,
        shadow: str | None = None,
        *,
        desired: dict[str, Any] | None = None,
        reported: dict[str, Any] | None = None,
        version: int | None = None,
    ) -> dict[str, Any]: ...

    @abstractmethod
    async def delete(self, shadow: str | None = None) -> dict[str, Any]: ...

    @abstractmethod
    async def close(self) -> None: ...


async def _wait(future: concurrent.futures.Future[Any]) -> Any:
    return await asyncio.wait_for(asyncio.wrap_future(future), TIMEOUT_S)


# --- AWS IoT Device SDK v2, MQTT 3.1.1: awsiot.iotshadow.IotShadowClient -------------------


class Mqtt3Device(ShadowDevice):
    """The v2 SDK's MQTT 3 connection and its publish/subscribe shadow client."""

    def __init__(self, endpoint: Endpoint, *, named: tuple[str, ...] = ("config",)) -> None:
        super().__init__(endpoint)
        self.named = named
        self.pending: dict[str, asyncio.Future[Any]] = {}

    async def connect(self) -> None:
        from awsiot import iotshadow, mqtt_connection_builder

        files = self.endpoint.files
        self.connection = mqtt_connection_builder.mtls_from_path(
            endpoint=ENDPOINT,
            port=self.endpoint.port,
            cert_filepath=str(files.cert),
            pri_key_filepath=str(files.key),
            ca_filepath=str(files.ca),
            client_id=self.endpoint.thing,
            clean_session=True,
            keep_alive_secs=30,
            on_connection_interrupted=lambda **_: self._cut(),
        )
        await _wait(self.connection.connect())
        self.shadow = iotshadow.IotShadowClient(self.connection)
        await self._subscribe_all()

    def _answer(self, ok: bool, shape: Any) -> Any:
        def callback(response: Any) -> None:
            future = self.pending.pop(response.client_token or "", None)
            if future is None:
                return
            self._from_thread(future, shape(response) if ok else _error(response))

        return callback

    async def _subscribe_all(self) -> None:
        from awscrt import mqtt
        from awsiot import iotshadow as s

        thing, qos, sub = self.endpoint.thing, mqtt.QoS.AT_LEAST_ONCE, self.shadow
        subscriptions = [
            sub.subscribe_to_get_shadow_accepted(
                s.GetShadowSubscriptionRequest(thing_name=thing), qos, self._answer(True, _got)
            ),
            sub.subscribe_to_get_shadow_rejected(
                s.GetShadowSubscriptionRequest(thing_name=thing), qos, self._answer(False, None)
            ),
            sub.subscribe_to_update_shadow_accepted(
                s.UpdateShadowSubscriptionRequest(thing_name=thing),
                qos,
                self._answer(True, _updated),
            ),
            sub.subscribe_to_update_shadow_rejected(
                s.UpdateShadowSubscriptionRequest(thing_name=thing),
                qos,
                self._answer(False, None),
            ),
            sub.subscribe_to_delete_shadow_accepted(
                s.DeleteShadowSubscriptionRequest(thing_name=thing),
                qos,
                self._answer(True, _deleted),
            ),
            sub.subscribe_to_delete_shadow_rejected(
                s.DeleteShadowSubscriptionRequest(thing_name=thing),
                qos,
                self._answer(False, None),
            ),
            sub.subscribe_to_shadow_delta_updated_events(
                s.ShadowDeltaUpdatedSubscriptionRequest(thing_name=thing),
                qos,
                lambda event: self._delta({"state": event.state, "version": event.version}),
            ),
        ]
        for name in self.named:
            subscriptions += [
                sub.subscribe_to_get_named_shadow_accepted(
                    s.GetNamedShadowSubscriptionRequest(thing_name=thing, shadow_name=name),
                    qos,
                    self._answer(True, _got),
                ),
                sub.subscribe_to_get_named_shadow_rejected(
                    s.GetNamedShadowSubscriptionRequest(thing_name=thing, shadow_name=name),
                    qos,
                    self._answer(False, None),
                ),
                sub.subscribe_to_update_named_shadow_accepted(
                    s.UpdateNamedShadowSubscriptionRequest(thing_name=thing, shadow_name=name),
                    qos,
                    self._answer(True, _updated),
                ),
                sub.subscribe_to_update_named_shadow_rejected(
                    s.UpdateNamedShadowSubscriptionRequest(thing_name=thing, shadow_name=name),
                    qos,
                    self._answer(False, None),
                ),
                sub.subscribe_to_delete_named_shadow_accepted(
                    s.DeleteNamedShadowSubscriptionRequest(thing_name=thing, shadow_name=name),
                    qos,
                    self._answer(True, _deleted),
                ),
                sub.subscribe_to_delete_named_shadow_rejected(
                    s.DeleteNamedShadowSubscriptionRequest(thing_name=thing, shadow_name=name),
                    qos,
                    self._answer(False, None),
                ),
            ]
        for future, _topic in subscriptions:
            await _wait(future)

    async def _request(self, publish: Any) -> dict[str, Any]:
        token = uuid.uuid4().hex
        future: asyncio.Future[Any] = self.loop.create_future()
        self.pending[token] = future
        await _wait(publish(token))
        result: dict[str, Any] = await asyncio.wait_for(future, TIMEOUT_S)
        return result

    async def get(self, shadow: str | None = None) -> dict[str, Any]:
        from awscrt import mqtt
        from awsiot import iotshadow as s

        thing, qos = self.endpoint.thing, mqtt.QoS.AT_LEAST_ONCE
        if shadow is None:
            return await self._request(
                lambda token: self.shadow.publish_get_shadow(
                    s.GetShadowRequest(thing_name=thing, client_token=token), qos
                )
            )
        return await self._request(
            lambda token: self.shadow.publish_get_named_shadow(
                s.GetNamedShadowRequest(thing_name=thing, shadow_name=shadow, client_token=token),
                qos,
            )
        )

    async def update(
        self,
        shadow: str | None = None,
        *,
        desired: dict[str, Any] | None = None,
        reported: dict[str, Any] | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        from awscrt import mqtt
        from awsiot import iotshadow as s

        thing, qos = self.endpoint.thing, mqtt.QoS.AT_LEAST_ONCE
        state = s.ShadowState(desired=desired, reported=reported)
        if shadow is None:
            return await self._request(
                lambda token: self.shadow.publish_update_shadow(
                    s.UpdateShadowRequest(
                        thing_name=thing, state=state, version=version, client_token=token
                    ),
                    qos,
                )
            )
        return await self._request(
            lambda token: self.shadow.publish_update_named_shadow(
                s.UpdateNamedShadowRequest(
                    thing_name=thing,
                    shadow_name=shadow,
                    state=state,
                    version=version,
                    client_token=token,
                ),
                qos,
            )
        )

    async def delete(self, shadow: str | None = None) -> dict[str, Any]:
        from awscrt import mqtt
        from awsiot import iotshadow as s

        thing, qos = self.endpoint.thing, mqtt.QoS.AT_LEAST_ONCE
        if shadow is None:
            return await self._request(
                lambda token: self.shadow.publish_delete_shadow(
                    s.DeleteShadowRequest(thing_name=thing, client_token=token), qos
                )
            )
        return await self._request(
            lambda token: self.shadow.publish_delete_named_shadow(
                s.DeleteNamedShadowRequest(
                    thing_name=thing, shadow_name=shadow, client_token=token
                ),
                qos,
            )
        )

    async def subscribe_raw(self, topic: str) -> bool:
        """A plain subscription (to try another thing's topic): True when granted."""
        from awscrt import mqtt

        future, _ = self.connection.subscribe(topic, mqtt.QoS.AT_LEAST_ONCE, lambda **_: None)
        try:
            granted = await _wait(future)
        except mqtt.SubscribeError:
            return False
        return granted.get("qos") is not None

    async def close(self) -> None:
        await _wait(self.connection.disconnect())


def _error(response: Any) -> Rejected:
    return Rejected(int(response.code), str(response.message))


def _got(response: Any) -> dict[str, Any]:
    state = response.state
    return {
        "version": response.version,
        "state": _state(state.desired, state.reported, state.delta) if state else {},
    }


def _updated(response: Any) -> dict[str, Any]:
    state = response.state
    return {
        "version": response.version,
        "state": _state(state.desired, state.reported) if state else {},
    }


def _deleted(response: Any) -> dict[str, Any]:
    return {"version": response.version}


# --- AWS IoT Device SDK v2, MQTT 5: awsiot.iotshadow.IotShadowClientV2 ---------------------


class Mqtt5Device(ShadowDevice):
    """The v2 SDK's MQTT 5 client and its request-response shadow client."""

    async def connect(self) -> None:
        from awscrt import mqtt_request_response
        from awsiot import ServiceStreamOptions, iotshadow, mqtt5_client_builder

        files = self.endpoint.files
        connected: asyncio.Future[None] = self.loop.create_future()

        def stopped(data: Any) -> None:
            self._cut()
            self._from_thread(connected, ConnectionError(f"connection failed: {data}"))

        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint=ENDPOINT,
            port=self.endpoint.port,
            cert_filepath=str(files.cert),
            pri_key_filepath=str(files.key),
            ca_filepath=str(files.ca),
            client_id=self.endpoint.thing,
            on_lifecycle_connection_success=lambda _: self._from_thread(connected, None),
            on_lifecycle_connection_failure=stopped,
            on_lifecycle_disconnection=lambda _: self._cut(),
            on_lifecycle_stopped=lambda _: self.on_stopped(),
        )
        self.on_stopped = lambda: None
        self.client.start()
        try:
            await asyncio.wait_for(connected, TIMEOUT_S)
        except BaseException:
            self.client.stop()
            raise
        self.shadow = iotshadow.IotShadowClientV2(
            self.client,
            mqtt_request_response.ClientOptions(
                max_request_response_subscriptions=6,
                max_streaming_subscriptions=2,
                operation_timeout_in_seconds=TIMEOUT_S,
            ),
        )
        subscribed: asyncio.Future[None] = self.loop.create_future()

        def status(event: Any) -> None:
            kind = mqtt_request_response.SubscriptionStatusEventType
            if event.type == kind.SUBSCRIPTION_ESTABLISHED:
                self._from_thread(subscribed, None)
            elif event.type == kind.SUBSCRIPTION_HALTED:
                self._from_thread(subscribed, ConnectionError(f"delta stream: {event.error}"))

        self.stream = self.shadow.create_shadow_delta_updated_stream(
            iotshadow.ShadowDeltaUpdatedSubscriptionRequest(thing_name=self.endpoint.thing),
            ServiceStreamOptions(
                lambda event: self._delta({"state": event.state, "version": event.version}),
                subscription_status_listener=status,
            ),
        )
        self.stream.open()
        await asyncio.wait_for(subscribed, TIMEOUT_S)

    async def _call(self, future: concurrent.futures.Future[Any], shape: Any) -> dict[str, Any]:
        from awsiot import V2ServiceException

        try:
            response = await _wait(future)
        except V2ServiceException as exc:
            if exc.modeled_error is not None:
                raise _error(exc.modeled_error) from None
            raise
        result: dict[str, Any] = shape(response)
        return result

    async def get(self, shadow: str | None = None) -> dict[str, Any]:
        from awsiot import iotshadow as s

        thing = self.endpoint.thing
        if shadow is None:
            return await self._call(
                self.shadow.get_shadow(s.GetShadowRequest(thing_name=thing)), _got
            )
        return await self._call(
            self.shadow.get_named_shadow(
                s.GetNamedShadowRequest(thing_name=thing, shadow_name=shadow)
            ),
            _got,
        )

    async def update(
        self,
        shadow: str | None = None,
        *,
        desired: dict[str, Any] | None = None,
        reported: dict[str, Any] | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        from awsiot import iotshadow as s

        thing = self.endpoint.thing
        state = s.ShadowState(desired=desired, reported=reported)
        if shadow is None:
            request: Any = s.UpdateShadowRequest(thing_name=thing, state=state, version=version)
            return await self._call(self.shadow.update_shadow(request), _updated)
        request = s.UpdateNamedShadowRequest(
            thing_name=thing, shadow_name=shadow, state=state, version=version
        )
        return await self._call(self.shadow.update_named_shadow(request), _updated)

    async def delete(self, shadow: str | None = None) -> dict[str, Any]:
        from awsiot import iotshadow as s

        thing = self.endpoint.thing
        if shadow is None:
            return await self._call(
                self.shadow.delete_shadow(s.DeleteShadowRequest(thing_name=thing)), _deleted
            )
        return await self._call(
            self.shadow.delete_named_shadow(
                s.DeleteNamedShadowRequest(thing_name=thing, shadow_name=shadow)
            ),
            _deleted,
        )

    async def close(self) -> None:
        stopped: asyncio.Future[None] = self.loop.create_future()
        self.on_stopped = lambda: self._from_thread(stopped, None)
        self.client.stop()
        await asyncio.wait_for(stopped, TIMEOUT_S)


# --- AWS IoT Device SDK for Python v1: AWSIoTMQTTShadowClient -------------------------------


class V1Device(ShadowDevice):
    """The v1 SDK's shadow client (classic shadow); named shadows over its MQTT connection."""

    async def connect(self) -> None:
        from AWSIoTPythonSDK.MQTTLib import AWSIoTMQTTShadowClient

        files = self.endpoint.files
        client = AWSIoTMQTTShadowClient(self.endpoint.thing)
        client.configureEndpoint(ENDPOINT, self.endpoint.port)
        client.configureCredentials(str(files.ca), str(files.key), str(files.cert))
        client.configureConnectDisconnectTimeout(TIMEOUT_S)
        client.configureMQTTOperationTimeout(TIMEOUT_S)
        client.configureAutoReconnectBackoffTime(1, 4, 2)
        client.onOffline = self._cut
        self.client = client
        if not await asyncio.to_thread(client.connect, 30):
            raise ConnectionError("the v1 SDK did not connect")
        self.handler = client.createShadowHandlerWithName(self.endpoint.thing, True)
        await asyncio.to_thread(
            self.handler.shadowRegisterDeltaCallback,
            lambda payload, _status, _token: self._delta(json.loads(payload)),
        )
        self.mqtt = client.getMQTTConnection()
        self.named_pending: dict[str, asyncio.Future[Any]] = {}
        self.named_subscribed: set[str] = set()

    def _callback(self, future: asyncio.Future[Any], shape: Any) -> Any:
        def callback(payload: str, status: str, _token: str) -> None:
            if status == "accepted":
                self._from_thread(future, shape(json.loads(payload)))
            elif status == "rejected":
                body = json.loads(payload)
                self._from_thread(future, Rejected(int(body["code"]), str(body["message"])))
            else:
                self._from_thread(future, TimeoutError(f"shadow request {status}"))

        return callback

    async def _classic(self, call: Any, shape: Any) -> dict[str, Any]:
        future: asyncio.Future[Any] = self.loop.create_future()
        await asyncio.to_thread(call, self._callback(future, shape))
        result: dict[str, Any] = await asyncio.wait_for(future, TIMEOUT_S + 2)
        return result

    async def _named(self, shadow: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        prefix = f"$aws/things/{self.endpoint.thing}/shadow/name/{shadow}"
        if shadow not in self.named_subscribed:

            def on_message(_client: Any, _userdata: Any, message: Any) -> None:
                answer = json.loads(message.payload)
                future = self.named_pending.pop(answer.get("clientToken", ""), None)
                if future is None:
                    return
                if message.topic.endswith("/rejected"):
                    self._from_thread(future, Rejected(int(answer["code"]), answer["message"]))
                else:
                    self._from_thread(future, answer)

            for act in ("get", "update", "delete"):
                for outcome in ("accepted", "rejected"):
                    ok = await asyncio.to_thread(
                        self.mqtt.subscribe, f"{prefix}/{act}/{outcome}", 1, on_message
                    )
                    assert ok
            self.named_subscribed.add(shadow)
        token = uuid.uuid4().hex
        future: asyncio.Future[Any] = self.loop.create_future()
        self.named_pending[token] = future
        await asyncio.to_thread(
            self.mqtt.publish, f"{prefix}/{action}", json.dumps({**body, "clientToken": token}), 1
        )
        answer: dict[str, Any] = await asyncio.wait_for(future, TIMEOUT_S)
        return answer

    async def get(self, shadow: str | None = None) -> dict[str, Any]:
        if shadow is None:
            return await self._classic(lambda cb: self.handler.shadowGet(cb, TIMEOUT_S), _document)
        return _document(await self._named(shadow, "get", {}))

    async def update(
        self,
        shadow: str | None = None,
        *,
        desired: dict[str, Any] | None = None,
        reported: dict[str, Any] | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"state": _state(desired, reported)}
        if version is not None:
            body["version"] = version
        if shadow is None:
            payload = json.dumps(body)
            return await self._classic(
                lambda cb: self.handler.shadowUpdate(payload, cb, TIMEOUT_S), _document
            )
        return _document(await self._named(shadow, "update", body))

    async def delete(self, shadow: str | None = None) -> dict[str, Any]:
        if shadow is None:
            return await self._classic(
                lambda cb: self.handler.shadowDelete(cb, TIMEOUT_S),
                lambda body: {"version": body.get("version")},
            )
        answer = await self._named(shadow, "delete", {})
        return {"version": answer.get("version")}

    async def subscribe_raw(self, topic: str) -> bool:
        """v1 raises on a refused subscription; True when the broker granted it."""
        try:
            return bool(await asyncio.to_thread(self.mqtt.subscribe, topic, 1, None))
        except Exception:
            return False

    async def close(self) -> None:
        from AWSIoTPythonSDK.exception.AWSIoTExceptions import disconnectTimeoutException

        # A connection the broker cut times out here; disconnect still ends its retries.
        with contextlib.suppress(disconnectTimeoutException):
            await asyncio.to_thread(self.client.disconnect)


def _document(body: dict[str, Any]) -> dict[str, Any]:
    state = body.get("state") or {}
    return {
        "version": body.get("version"),
        "state": _state(state.get("desired"), state.get("reported"), state.get("delta")),
    }


SDKS: dict[str, type[ShadowDevice]] = {
    "awsiotsdk-mqtt3": Mqtt3Device,
    "awsiotsdk-mqtt5": Mqtt5Device,
    "AWSIoTPythonSDK-v1": V1Device,
}
