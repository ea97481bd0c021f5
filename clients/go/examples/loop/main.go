// Command loop drives one round of the Tandem loop: load → generate → train → generate.
//
//	go run ./examples/loop -target 127.0.0.1:50051 -steps 20
//
// It loads the built-in tiny model, samples greedily, trains the adapter on one
// prompt/completion pair, and samples again from the new adapter version.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"

	"google.golang.org/protobuf/proto"

	tandem "github.com/tandem-ai/tandem/clients/go"
	tandemv1 "github.com/tandem-ai/tandem/clients/go/gen/tandem/v1"
)

func main() {
	target := flag.String("target", "127.0.0.1:50051", "server host:port")
	token := flag.String("token", os.Getenv("TANDEM_TOKEN"), "bearer token (default $TANDEM_TOKEN)")
	steps := flag.Int("steps", 20, "training steps")
	prompt := flag.String("prompt", "The people", "prompt to train and sample on")
	completion := flag.String("completion", " say hello", "completion to train towards")
	flag.Parse()

	var options []tandem.Option
	if *token != "" {
		options = append(options, tandem.WithToken(*token))
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
	sample := func(label string) {
		completions, err := client.Generate(ctx, greedy)
		if err != nil {
			log.Fatalf("Generate: %v", err)
		}
		fmt.Printf("%s: adapter version %d: %q\n", label, completions[0].AdapterVersion, completions[0].Text)
	}
	sample("before")

	batch := &tandemv1.TrainStepRequest{
		Sequences: []*tandemv1.TrainSequence{{Prompt: *prompt, Completion: *completion}},
		Optimizer: &tandemv1.OptimizerConfig{LearningRate: proto.Float32(1e-2)},
	}
	for i := 0; i < *steps; i++ {
		reply, err := client.TrainStep(ctx, batch)
		if err != nil {
			log.Fatalf("TrainStep: %v", err)
		}
		fmt.Printf("step %d: loss %.4f, adapter version %d\n", reply.GetStep(), reply.GetLoss(), reply.GetAdapterVersion())
	}
	sample("after")
}
