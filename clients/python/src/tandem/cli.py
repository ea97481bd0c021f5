"""The ``tandem`` command line: status, load, generate, train and adapter commands.

    tandem status
    tandem load --max-seq-length 512 --lora-rank 16
    tandem generate "The people" --max-tokens 16 --temperature 0
    tandem train sft.jsonl --lr 1e-3 --batch-size 8
    tandem adapters save step-100
    tandem tokenize "The people" --offsets
    tandem detokenize 1 74 130
    tandem --json adapters list

Connection flags (``--target``, ``--token``, TLS) and ``--json`` go before or
after the command; ``$TANDEM_TARGET`` and ``$TANDEM_TOKEN`` give defaults.
With ``--json`` each command prints one JSON document on stdout (messages in
the proto's JSON form, as grpcurl prints them). A failed call prints
``tandem: CODE: message`` on stderr and exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message

from tandem.client import Client
from tandem.completions import Completion, CompletionCollector
from tandem.connection import DEFAULT_TARGET, TlsOptions
from tandem.errors import TandemError
from tandem.progress import ProgressBar
from tandem.requests import LOSS_FUNCTIONS
from tandem.retry import Deadlines
from tandem.v1 import tandem_pb2 as pb

DTYPES = {"auto": pb.D_TYPE_UNSPECIFIED, "float32": pb.D_TYPE_FLOAT32, "float16": pb.D_TYPE_FLOAT16, "bfloat16": pb.D_TYPE_BFLOAT16}


def to_json(message: Message) -> dict[str, Any]:
    """A message in the proto's JSON form, with field names as in the .proto and zero values shown."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def print_json(document: object) -> None:
    """Print one JSON document on stdout."""
    print(json.dumps(document, indent=2))


def emit(args: argparse.Namespace, document: object, text: str) -> None:
    """Print the JSON document with --json, else the human-readable text."""
    if args.json:
        print_json(document)
    else:
        print(text)


def describe(model: pb.ModelInfo) -> str:
    """A one-line summary of a loaded model."""
    engine = pb.EngineKind.Name(model.engine).removeprefix("ENGINE_KIND_").lower()
    dtype = pb.DType.Name(model.dtype).removeprefix("D_TYPE_").lower()
    return (
        f"{model.model_name}: {engine} engine on {model.device}, {dtype}{', 4-bit' if model.load_in_4bit else ''}; "
        f"LoRA rank {model.lora.rank}; adapter version {model.adapter_version}, step {model.step}; "
        f"max_seq_length {model.max_seq_length}"
    )


def cmd_status(client: Client, args: argparse.Namespace) -> None:
    """Show what the server has loaded."""
    model = client.get_model()
    document = {"loaded": model is not None, "model": to_json(model) if model is not None else None}
    emit(args, document, describe(model) if model is not None else f"{client.target}: no model loaded")


def load_fields(args: argparse.Namespace) -> dict[str, Any]:
    """LoadModelRequest fields (JSON form) from the load command's flags; unset flags keep server defaults."""
    fields: dict[str, Any] = json.loads(args.request) if args.request else {}
    flag_fields = {
        "model_name": args.model,
        "max_seq_length": args.max_seq_length,
        "load_in_4bit": args.load_in_4bit,
        "fast_inference": args.fast_inference,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "gradient_checkpointing": args.gradient_checkpointing,
        "random_state": args.seed,
    }
    fields.update({name: value for name, value in flag_fields.items() if value is not None})
    if args.dtype is not None:
        fields["dtype"] = DTYPES[args.dtype]
    lora = {"rank": args.lora_rank, "alpha": args.lora_alpha}
    fields.setdefault("lora", {}).update({name: value for name, value in lora.items() if value is not None})
    return fields


def cmd_load(client: Client, args: argparse.Namespace) -> None:
    """Load a model, with a progress bar on stderr."""
    bar = None if args.json else ProgressBar(sys.stderr)
    try:
        model = client.load_model(load_fields(args), on_progress=bar.update if bar else None)
    finally:
        if bar is not None:
            bar.finish()
    emit(args, to_json(model), describe(model))


def cmd_unload(client: Client, args: argparse.Namespace) -> None:
    """Release the model."""
    unloaded = client.unload_model()
    emit(args, {"unloaded": unloaded}, "unloaded" if unloaded else "no model was loaded")


def sampling_fields(args: argparse.Namespace) -> dict[str, Any]:
    """SamplingParams fields from the generate command's flags; unset flags keep server defaults."""
    fields = {
        "n": args.n,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "min_p": args.min_p,
        "seed": args.seed,
        "logprobs": args.logprobs,
        "stop": args.stop,
        "ignore_eos": args.ignore_eos or None,
    }
    return {name: value for name, value in fields.items() if value is not None}


def finish_note(completion: Completion) -> str:
    """How a sample ended, e.g. "length, 16 tokens, adapter version 3"."""
    return f"{completion.finish_reason}, {completion.completion_tokens} tokens, adapter version {completion.adapter_version}"


def stream_text(chunks: Iterator[pb.GenerateResponse], single: bool, out: TextIO) -> list[Completion]:
    """Print generated text as it arrives: one sample live, several each as it finishes."""
    collector = CompletionCollector()
    for chunk in chunks:
        completion = collector.add(chunk)
        if single:
            out.write(chunk.text)
        elif completion.finish_reason:
            out.write(f"--- prompt {completion.prompt_index}, sample {completion.sample_index} ({finish_note(completion)})\n")
            out.write(completion.text + "\n")
        out.flush()
    completions = collector.completions()
    if single and completions:
        out.write("\n")
        print(f"({finish_note(completions[0])})", file=sys.stderr)
    return completions


def cmd_generate(client: Client, args: argparse.Namespace) -> None:
    """Generate from the prompts, streaming text to the terminal."""
    sampling = sampling_fields(args)
    chunks = client.generate_stream(args.prompts, sampling=sampling, adapter=args.adapter)
    try:
        if args.json:
            collector = CompletionCollector()
            for chunk in chunks:
                collector.add(chunk)
            print_json({"completions": [dataclasses.asdict(c) for c in collector.completions()]})
        else:
            stream_text(chunks, single=len(args.prompts) == 1 and sampling.get("n", 1) == 1, out=sys.stdout)
    finally:
        chunks.close()  # cancels the call when interrupted


def read_sequences(path: str) -> list[pb.TrainSequence]:
    """TrainSequence messages from a JSONL file ("-" = stdin), one JSON object per non-empty line."""
    lines = sys.stdin.read().splitlines() if path == "-" else Path(path).read_text().splitlines()
    sequences = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            sequences.append(json_format.Parse(line, pb.TrainSequence()))
        except json_format.ParseError as error:
            raise ValueError(f"{path}:{number}: not a TrainSequence: {error}") from None
    if not sequences:
        raise ValueError(f"{path}: no training sequences")
    return sequences


def batches(sequences: Sequence[pb.TrainSequence], size: int, epochs: int) -> Iterator[list[pb.TrainSequence]]:
    """The sequences in order, ``size`` at a time, ``epochs`` times over."""
    for _ in range(epochs):
        iterator = iter(sequences)
        while batch := list(islice(iterator, size)):
            yield batch


def cmd_train(client: Client, args: argparse.Namespace) -> None:
    """One TrainStep per batch of the JSONL file."""
    sequences = read_sequences(args.file)
    optimizer = {"learning_rate": args.lr, "weight_decay": args.weight_decay, "max_grad_norm": args.max_grad_norm}
    optimizer = {name: value for name, value in optimizer.items() if value is not None}
    steps = []
    for batch in batches(sequences, args.batch_size, args.epochs):
        reply = client.train_step(batch, loss=args.loss, optimizer=optimizer)
        steps.append(to_json(reply))
        if not args.json:
            outcome = pb.StepOutcome.Name(reply.outcome).removeprefix("STEP_OUTCOME_").lower()
            print(
                f"step {reply.step:>5}  loss {reply.loss:9.4f}  grad_norm {reply.grad_norm:8.4f}  "
                f"tokens {reply.tokens:>6}  adapter version {reply.adapter_version}  {outcome}",
                flush=True,
            )
    if args.json:
        print_json({"steps": steps})


def describe_checkpoint(checkpoint: pb.AdapterCheckpoint) -> str:
    """A one-line summary of a saved adapter."""
    return f"{checkpoint.name}: step {checkpoint.step}, adapter version {checkpoint.adapter_version}, rank {checkpoint.rank}, {checkpoint.size_bytes} bytes"


def cmd_adapters(client: Client, args: argparse.Namespace) -> None:
    """List, save, load or delete adapter checkpoints."""
    if args.action == "list":
        checkpoints = client.list_adapters()
        emit(args, {"checkpoints": [to_json(c) for c in checkpoints]}, "\n".join(describe_checkpoint(c) for c in checkpoints) or "no checkpoints")
    elif args.action == "save":
        checkpoint = client.save_adapter(args.name, overwrite=args.overwrite)
        emit(args, to_json(checkpoint), f"saved {describe_checkpoint(checkpoint)}")
    elif args.action == "load":
        reply = client.load_adapter(args.name)
        emit(args, to_json(reply), f"loaded {args.name}: step {reply.step}, adapter version {reply.adapter_version}")
    else:
        client.delete_adapter(args.name)
        emit(args, {"deleted": args.name}, f"deleted {args.name}")


def read_chat(path: str) -> list[dict[str, str]]:
    """A conversation from a JSON file ("-" = stdin): a list of {"role": ..., "content": ...} messages."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    try:
        messages = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON: {error}") from None
    if not isinstance(messages, list):
        raise ValueError(f"{path}: expected a list of chat messages")
    return messages


def cmd_tokenize(client: Client, args: argparse.Namespace) -> None:
    """Token ids of the texts (and the --chat conversation), one line of ids per input."""
    inputs: list[Any] = list(args.texts) + ([read_chat(args.chat)] if args.chat else [])
    results = client.tokenize(
        inputs, add_special_tokens=args.add_special_tokens, add_generation_prompt=args.add_generation_prompt, return_offsets=args.offsets
    )
    lines = []
    for result in results:
        if args.offsets:
            lines.append(" ".join(f"{token}@{span.start}:{span.end}" for token, span in zip(result.ids, result.offsets, strict=True)))
        else:
            lines.append(" ".join(str(token) for token in result.ids))
    emit(args, to_json(pb.TokenizeResponse(results=results)), "\n".join(lines))


def cmd_detokenize(client: Client, args: argparse.Namespace) -> None:
    """The text of one list of token ids."""
    texts = client.detokenize([args.ids], skip_special_tokens=args.skip_special_tokens)
    emit(args, {"texts": texts}, texts[0])


def add_common_flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """Connection and output flags; on subcommands they default to SUPPRESS so the top-level values stand."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--target", default=default(os.environ.get("TANDEM_TARGET", DEFAULT_TARGET)), help=f"server host:port (default $TANDEM_TARGET or {DEFAULT_TARGET})"
    )
    parser.add_argument("--token", default=default(os.environ.get("TANDEM_TOKEN")), help="bearer token (default $TANDEM_TOKEN)")
    parser.add_argument("--tls", action="store_true", default=default(False), help="use TLS (implied by the certificate flags)")
    parser.add_argument("--ca-cert", default=default(None), help="PEM file of the CA that signed the server certificate")
    parser.add_argument("--client-cert", default=default(None), help="PEM client certificate, for mutual TLS")
    parser.add_argument("--client-key", default=default(None), help="PEM client key, for mutual TLS")
    parser.add_argument("--server-name", default=default(None), help="name to check the server certificate against")
    parser.add_argument("--timeout", type=float, default=default(None), help="deadline for the command's calls, in seconds")
    parser.add_argument("--json", action="store_true", default=default(False), help="print one JSON document on stdout")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(prog="tandem", description="Drive a Tandem server: load, generate, train, adapters.")
    add_common_flags(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, handler: Any, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        add_common_flags(sub, suppress=True)
        sub.set_defaults(handler=handler)
        return sub

    command("status", cmd_status, "show the loaded model")
    load = command("load", cmd_load, "load a model (replaces the loaded one), showing progress")
    load.add_argument("--model", help="model name (default: the built-in tiny model)")
    load.add_argument("--max-seq-length", type=int)
    load.add_argument("--dtype", choices=DTYPES)
    load.add_argument("--load-in-4bit", action=argparse.BooleanOptionalAction, default=None)
    load.add_argument("--fast-inference", action=argparse.BooleanOptionalAction, default=None, help="use vLLM (GPU)")
    load.add_argument("--gpu-memory-utilization", type=float)
    load.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    load.add_argument("--lora-rank", type=int)
    load.add_argument("--lora-alpha", type=float)
    load.add_argument("--seed", type=int, help="random_state")
    load.add_argument("--request", help="a LoadModelRequest in JSON; flags override its fields")
    command("unload", cmd_unload, "release the model")

    generate = command("generate", cmd_generate, "generate completions, streaming text as it is produced")
    generate.add_argument("prompts", nargs="+", metavar="PROMPT")
    generate.add_argument("-n", type=int, help="samples per prompt")
    generate.add_argument("--max-tokens", type=int)
    generate.add_argument("--temperature", type=float)
    generate.add_argument("--top-p", type=float)
    generate.add_argument("--top-k", type=int)
    generate.add_argument("--min-p", type=float)
    generate.add_argument("--seed", type=int)
    generate.add_argument("--logprobs", type=int, help="return logprobs with this many top alternatives")
    generate.add_argument("--stop", action="append", help="stop string (repeatable)")
    generate.add_argument("--ignore-eos", action="store_true")
    generate.add_argument("--adapter", default="", help='"" (trained), "base", or a saved checkpoint name')

    train = command("train", cmd_train, "train on a JSONL file of TrainSequence objects, one TrainStep per batch")
    train.add_argument("file", help='JSONL file ("-" for stdin), e.g. {"prompt": "Q", "completion": " A"}')
    train.add_argument("--loss", choices=LOSS_FUNCTIONS, default="cross_entropy")
    train.add_argument("--lr", type=float, help="learning rate")
    train.add_argument("--weight-decay", type=float)
    train.add_argument("--max-grad-norm", type=float)
    train.add_argument("--batch-size", type=int, default=8, help="sequences per step (default %(default)s)")
    train.add_argument("--epochs", type=int, default=1, help="passes over the file (default %(default)s)")

    tokenize = command("tokenize", cmd_tokenize, "token ids of texts or a conversation, with the served model's tokenizer")
    tokenize.add_argument("texts", nargs="*", metavar="TEXT")
    tokenize.add_argument("--chat", metavar="FILE", help='also tokenize a conversation: a JSON list of {"role": ..., "content": ...} ("-" for stdin)')
    tokenize.add_argument("--add-generation-prompt", action="store_true", help="end the conversation with the template's cue for the assistant")
    tokenize.add_argument(
        "--special-tokens", dest="add_special_tokens", action=argparse.BooleanOptionalAction, default=None, help="add BOS etc. (default: yes for text)"
    )
    tokenize.add_argument("--offsets", action="store_true", help="print each id as ID@START:END (character span)")
    detokenize = command("detokenize", cmd_detokenize, "the text of a list of token ids")
    detokenize.add_argument("ids", nargs="+", type=int, metavar="ID")
    detokenize.add_argument("--skip-special-tokens", action="store_true", help="leave BOS, EOS, padding ... out of the text")

    adapters = command("adapters", cmd_adapters, "list, save, load or delete adapter checkpoints")
    actions = adapters.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="list checkpoints")
    save = actions.add_parser("save", help="save the trained adapter")
    save.add_argument("name")
    save.add_argument("--overwrite", action="store_true")
    actions.add_parser("load", help="restore a checkpoint").add_argument("name")
    actions.add_parser("delete", help="delete a checkpoint").add_argument("name")
    return parser


def client_for(args: argparse.Namespace) -> Client:
    """A client from the connection flags."""
    certificates = (args.ca_cert, args.client_cert, args.client_key)
    tls = None
    if args.tls or any(certificates) or args.server_name:
        tls = TlsOptions.from_files(*certificates, server_name=args.server_name)
    deadlines = Deadlines.every(args.timeout) if args.timeout is not None else None
    return Client(args.target, token=args.token, tls=tls, deadlines=deadlines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0 ok, 1 call failed, 2 bad input, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        with client_for(args) as client:
            args.handler(client, args)
    except TandemError as error:
        print(f"tandem: {error.code.name}: {error.details}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:
        print(f"tandem: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
