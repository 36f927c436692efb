"""Structured output and tools through a real HTTP server on 127.0.0.1 (the app served by
werkzeug in a thread, so the test can see the engine's batches) and real clients: the official
`openai` client, LangChain (`langchain-openai`) and LiteLLM, on the real SmolLM2-135M."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Annotated, Literal

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field
from werkzeug.serving import make_server

from tests.test_batching import gather

pytestmark = [pytest.mark.server, pytest.mark.slow]
MODEL = "smollm2"


@pytest.fixture(scope="module")
def live(smollm2_models_dir, tmp_path_factory):
    """(base url, app): SmolLM2 loaded, batches of up to 8 rows."""
    from app import create_app

    tmp = tmp_path_factory.mktemp("tools_live")
    app = create_app(
        {
            "models_dir": smollm2_models_dir,
            "offline": True,
            "log_to_file": False,
            "tmp_dir": tmp / "tmp",
            "log_dir": tmp / "logs",
            "default_keep_alive": -1,
            "materialise_at_start": False,
            "batch_max_size": 8,
        }
    )
    app.extensions["mmserve"].manager.load(MODEL)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", app
    server.shutdown()
    app.extensions["mmserve_close"](timeout=5)


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live[0] + "/v1", api_key="unused", max_retries=0, timeout=600)


def engine_of(app):
    return app.extensions["mmserve"].manager._slots[MODEL].loaded.engine


# --------------------------------------------------------------------------- schemas


class Address(BaseModel):
    city: str = Field(max_length=24)
    country: str = Field(max_length=24)


class Person(BaseModel):  # nested objects
    name: str = Field(max_length=24)
    address: Address


class Shopping(BaseModel):  # arrays
    items: list[Annotated[str, Field(max_length=20)]] = Field(min_length=1, max_length=3)
    total: int = Field(ge=0, le=1000)


class Color(StrEnum):
    red = "red"
    green = "green"
    blue = "blue"


class Ticket(BaseModel):  # enums
    priority: Literal["low", "medium", "high"]
    color: Color


class Event(BaseModel):  # required and optional fields
    title: str = Field(max_length=30)
    year: int = Field(ge=1900, le=2100)
    note: str | None = Field(default=None, max_length=20)


class Rating(BaseModel):  # bounded numbers
    stars: int = Field(ge=1, le=5)
    percent: int = Field(ge=0, le=100)


SCHEMAS = [Person, Shopping, Ticket, Event, Rating]
TOPICS = ["a sailor", "a bakery", "the moon", "a chess game", "a rainy day", "a cat",
          "a train trip", "a library", "a garden", "a storm", "a concert", "a museum",
          "a birthday", "a market", "a mountain", "a river", "a robot", "a school",
          "a forest", "a city"]  # fmt: skip
PROMPTS = [f"Answer in JSON about {t}." for t in TOPICS]


def parse(client, model_cls, prompt: str, **extra):
    return client.chat.completions.parse(
        model=MODEL,
        messages=[{"role": "user", "content": prompt}],
        response_format=model_cls,
        max_tokens=120,
        **extra,
    )


def test_parse_gives_a_valid_model_for_20_prompts_x_5_schemas(client):
    jobs = [(m, p) for m in SCHEMAS for p in PROMPTS]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda job: parse(client, *job), jobs))
    for (model_cls, _), answer in zip(jobs, answers, strict=True):
        choice = answer.choices[0]
        assert choice.finish_reason == "stop", choice
        assert isinstance(choice.message.parsed, model_cls)  # validated by the client too


def test_eight_schemas_share_one_batch_and_all_conform(live, client):
    _, app = live
    engine = engine_of(app)
    gather(engine, 8)
    models = [*SCHEMAS, Person, Ticket, Rating]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: parse(client, models[i], PROMPTS[i]), range(8)))
    for model_cls, answer in zip(models, answers, strict=True):
        assert isinstance(answer.choices[0].message.parsed, model_cls)
    assert max(engine.sizes) == 8  # the eight constrained rows decoded as one batch


def test_constrained_and_free_rows_share_a_batch(live, client):
    _, app = live
    engine = engine_of(app)
    gather(engine, 2)

    def free():
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=30
        )  # over short_max_tokens (16): the same lane as the constrained row

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(parse, client, Ticket, PROMPTS[0])
        b = pool.submit(free)
        assert isinstance(a.result().choices[0].message.parsed, Ticket)
        assert b.result().choices[0].message.content
    assert 2 in engine.sizes


def test_json_object_mode_and_a_cut_answer_says_length(client):
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a dog."}],
        response_format={"type": "json_object"},
        max_tokens=120,
    )
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    cut = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe a person."}],
        response_format={"type": "json_schema", "json_schema": {
            "name": "person", "schema": Person.model_json_schema()}},
        max_tokens=4,
    )  # fmt: skip
    assert cut.choices[0].finish_reason == "length"  # the JSON is cut short, as OpenAI says


# --------------------------------------------------------------------------- tools

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The local time in a time zone",
        "parameters": {
            "type": "object",
            "properties": {"zone": {"type": "string", "maxLength": 30}},
            "required": ["zone"],
        },
    },
}
TOOLS = [WEATHER, TIME]
SCHEMA_OF = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
QUESTIONS = [f"What is the weather in {c}?" for c in
             ("Paris", "Oslo", "Lima", "Cairo", "Tokyo", "Rome", "Quito", "Accra", "Delhi",
              "Seoul", "Hanoi", "Dakar", "Sofia", "Riga", "Bern", "Doha", "Kyiv", "Baku",
              "Minsk", "Nuuk")]  # fmt: skip


def call_tools(client, question: str, **extra):
    return client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        tools=TOOLS,
        max_tokens=120,
        **extra,
    )


def valid_calls(answer, name: str | None = None) -> list:
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls
    for call in calls:
        assert call.id.startswith("call_") and call.type == "function"
        assert name is None or call.function.name == name
        jsonschema.validate(json.loads(call.function.arguments), SCHEMA_OF[call.function.name])
    return calls


@pytest.mark.parametrize(
    "choice, name",
    [("required", None), ({"type": "function", "function": {"name": "get_time"}}, "get_time")],
)
def test_required_and_named_choice_give_valid_arguments_20_of_20(client, choice, name):
    def one(question):  # one call per answer: the 135M model would repeat it otherwise
        return call_tools(client, question, tool_choice=choice, parallel_tool_calls=False)

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, QUESTIONS))
    for answer in answers:
        valid_calls(answer, name)


def test_streamed_tool_calls_assemble_to_the_non_streamed_call(client):
    for choice, parallel in (
        ("required", True),
        ({"type": "function", "function": {"name": "get_weather"}}, False),
    ):
        extra = {"tool_choice": choice, "parallel_tool_calls": parallel}
        whole = call_tools(client, QUESTIONS[0], **extra)
        calls: dict[int, dict] = {}
        finish = None
        stream = call_tools(client, QUESTIONS[0], stream=True, **extra)
        for chunk in stream:
            if not chunk.choices:
                continue
            finish = chunk.choices[0].finish_reason or finish
            for piece in chunk.choices[0].delta.tool_calls or []:
                entry = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
                if piece.id:
                    assert entry["id"] is None  # id and name come once, in the first piece
                    entry["id"], entry["name"] = piece.id, piece.function.name
                entry["arguments"] += piece.function.arguments or ""
        expected = [(c.function.name, c.function.arguments) for c in valid_calls(whole)]
        got = [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)]
        assert got == expected and finish == "tool_calls"
        assert all(calls[i]["id"].startswith("call_") for i in calls)


def test_history_with_calls_and_tool_answers_renders(client):
    first = call_tools(client, QUESTIONS[1], tool_choice="required", parallel_tool_calls=False)
    (call,) = valid_calls(first)
    messages = [
        {"role": "user", "content": QUESTIONS[1]},
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "12 degrees and sunny"},
    ]
    answer = client.chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, tool_choice="none", max_tokens=30
    )
    assert answer.choices[0].message.content and answer.choices[0].finish_reason in ("stop",
                                                                                    "length")  # fmt: skip


def test_native_route_takes_format_and_tools(live):
    import requests

    url = live[0] + f"/generate/{MODEL}"
    schema = Ticket.model_json_schema()
    r = requests.post(url, json={"prompt": "A ticket.", "format": schema, "max_new_tokens": 60})
    assert r.status_code == 200, r.text
    Ticket.model_validate_json(r.json()["response"])
    r = requests.post(
        url,
        json={"prompt": QUESTIONS[2], "tools": TOOLS, "tool_choice": "required",
              "max_new_tokens": 120},
    )  # fmt: skip
    assert r.status_code == 200 and r.json()["tool_calls"], r.text
    for call in r.json()["tool_calls"]:
        jsonschema.validate(json.loads(call["function"]["arguments"]),
                            SCHEMA_OF[call["function"]["name"]])  # fmt: skip


# --------------------------------------------------------------------------- other clients


def test_langchain_bind_tools_and_with_structured_output(live):
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_time(zone: str) -> str:
        """The local time in a time zone."""
        return "12:00"

    llm = ChatOpenAI(
        model=MODEL, base_url=live[0] + "/v1", api_key="unused", max_tokens=120, temperature=0
    )
    message = llm.bind_tools([get_time], tool_choice="get_time").invoke("Time in Tokyo?")
    assert message.tool_calls and message.tool_calls[0]["name"] == "get_time"
    assert isinstance(message.tool_calls[0]["args"]["zone"], str)
    ticket = llm.with_structured_output(Ticket).invoke("Open a ticket about a broken door.")
    assert isinstance(ticket, Ticket)


def test_litellm_completion_with_tools(live):
    import litellm

    answer = litellm.completion(
        model=f"openai/{MODEL}",
        api_base=live[0] + "/v1",
        api_key="unused",
        messages=[{"role": "user", "content": QUESTIONS[3]}],
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
    )
    calls = answer.choices[0].message.tool_calls
    assert calls and answer.choices[0].finish_reason == "tool_calls"
    for call in calls:
        jsonschema.validate(json.loads(call.function.arguments), SCHEMA_OF[call.function.name])
