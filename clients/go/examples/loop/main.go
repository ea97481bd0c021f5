// Command loop drives one round of the Tandem loop: load → generate → train → generate.
//
//	go run ./examples/loop -target 127.0.0.1:50051 -steps 20
//	go run ./examples/loop -target trainer:50051 -samplers sampler-1:50051,sampler-2:50051
//
// It loads the built-in tiny model, samples greedily, trains the adapter on one
// prompt/completion pair, and samples again from the new adapter version (asking
// for it with min_adapter_version, so a sampler replica waits until it serves it).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"strings"

	"google.golang.org/protobuf/proto"

	tandem "github.com/tandem-ai/tandem/clients/go"
	tandemv1 "github.com/tandem-ai/tandem/clients/go/gen/tandem/v1"
)

func main() {
	target := flag.String("target", "127.0.0.1:50051", "server host:port; with -samplers, the trainer's")
	samplers := flag.String("samplers", "", "sampler replicas for Generate: host:port,host:port or dns:///name:port (default: -target)")
	token := flag.String("token", os.Getenv("TANDEM_TOKEN"), "bearer token (default $TANDEM_TOKEN)")
	steps := flag.Int("steps", 20, "training steps")
	prompt := flag.String("prompt", "The people", "prompt to train and sample on")
	completion := flag.String("completion", " say hello", "completion to train towards")
	flag.Parse()

	var options []tandem.Option
	if *token != "" {
		options = append(options, tandem.WithToken(*token))
	}
	if *samplers != "" {
		options = append(options, tandem.WithSamplers(strings.Split(*samplers, ",")...))
	}
	client, err := tandem.New(*target, options...)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()

	model, err := client.LoadModel(ctx, &tandemv1.LoadModelRequest{MaxSeqLength: proto.Uint32(512)}, func(p *tandemv1.LoadProgress) {
		fmt.Fprintf(os.Stderr, "load: %s %s\n", p.GetPhase(), p.GetMessage())
	})
	if err != nil {
		log.Fatalf("LoadModel: %v", err)
	}
	fmt.Printf("loaded %s (%s engine)\n", model.GetModelName(), model.GetEngine())

	greedy := &tandemv1.GenerateRequest{
		Prompts:  tandem.TextPrompts(*prompt),
		Sampling: &tandemv1.SamplingParams{MaxTokens: proto.Uint32(8), Temperature: proto.Float32(0)},
	}
	sample := func(label string, version uint64) {
		greedy.MinAdapterVersion = proto.Uint64(version)
		completions, err := client.Generate(ctx, greedy)
		if err != nil {
			log.Fatalf("Generate: %v", err)
		}
		fmt.Printf("%s: adapter version %d: %q\n", label, completions[0].AdapterVersion, completions[0].Text)
	}
	sample("before", model.GetAdapterVersion())

	batch := &tandemv1.TrainStepRequest{
		Sequences: []*tandemv1.TrainSequence{{Prompt: *prompt, Completion: *completion}},
		Optimizer: &tandemv1.OptimizerConfig{LearningRate: proto.Float32(1e-2)},
	}
	version := model.GetAdapterVersion()
	for i := 0; i < *steps; i++ {
		reply, err := client.TrainStep(ctx, batch)
		if err != nil {
			log.Fatalf("TrainStep: %v", err)
		}
		version = reply.GetAdapterVersion()
		fmt.Printf("step %d: loss %.4f, adapter version %d\n", reply.GetStep(), reply.GetLoss(), version)
	}
	sample("after", version)
}
