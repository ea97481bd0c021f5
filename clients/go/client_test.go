package tandem_test

import (
	"context"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tandem "github.com/tandem-ai/tandem/clients/go"
	tandemv1 "github.com/tandem-ai/tandem/clients/go/gen/tandem/v1"
)

// liveClient connects to the server at $TANDEM_ADDR, or skips the test without one.
func liveClient(t *testing.T) *tandem.Client {
	t.Helper()
	addr := os.Getenv("TANDEM_ADDR")
	if addr == "" {
		t.Skip("TANDEM_ADDR is not set (tests/clients/test_go_client.py sets it to a live server)")
	}
	client, err := tandem.New(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

func greedy(maxTokens uint32, prompts ...string) *tandemv1.GenerateRequest {
	return &tandemv1.GenerateRequest{
		Prompts:  tandem.TextPrompts(prompts...),
		Sampling: &tandemv1.SamplingParams{MaxTokens: proto.Uint32(maxTokens), Temperature: proto.Float32(0), IgnoreEos: true},
	}
}

func TestLoadGenerateTrainGenerate(t *testing.T) {
	client := liveClient(t)
	ctx := context.Background()
	var phases []tandemv1.LoadPhase
	model, err := client.LoadModel(ctx, &tandemv1.LoadModelRequest{MaxSeqLength: proto.Uint32(512)}, func(p *tandemv1.LoadProgress) {
		phases = append(phases, p.GetPhase())
	})
	if err != nil {
		t.Fatal(err)
	}
	if model.GetMaxSeqLength() != 512 || model.GetAdapterVersion() != 0 {
		t.Fatalf("loaded %v", model)
	}
	if len(phases) == 0 || phases[len(phases)-1] != tandemv1.LoadPhase_LOAD_PHASE_READY {
		t.Fatalf("progress phases %v do not end with READY", phases)
	}

	before, err := client.Generate(ctx, greedy(4, "The people", "A cat"))
	if err != nil {
		t.Fatal(err)
	}
	if len(before) != 2 || before[1].PromptIndex != 1 || before[0].CompletionTokens != 4 || len(before[0].TokenIDs) != 4 {
		t.Fatalf("completions %+v", before)
	}
	if before[0].FinishReason != tandemv1.FinishReason_FINISH_REASON_LENGTH || before[0].AdapterVersion != 0 {
		t.Fatalf("first completion %+v", before[0])
	}

	reply, err := client.TrainStep(ctx, &tandemv1.TrainStepRequest{
		Sequences: []*tandemv1.TrainSequence{{Prompt: "The people", Completion: " say hello"}},
		Optimizer: &tandemv1.OptimizerConfig{LearningRate: proto.Float32(1e-2)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if reply.GetOutcome() != tandemv1.StepOutcome_STEP_OUTCOME_APPLIED || reply.GetAdapterVersion() != 1 {
		t.Fatalf("train step %v", reply)
	}

	after, err := client.Generate(ctx, greedy(4, "The people"))
	if err != nil {
		t.Fatal(err)
	}
	if after[0].AdapterVersion != 1 {
		t.Fatalf("sample after the step reports adapter version %d, want 1", after[0].AdapterVersion)
	}
	info, err := client.GetModel(ctx)
	if err != nil || info.GetStep() != 1 {
		t.Fatalf("GetModel: %v, %v", info, err)
	}
}

func TestStoppingAStreamEarlyCancelsIt(t *testing.T) {
	client := liveClient(t)
	stop := errors.New("enough")
	chunks := 0
	err := client.GenerateStream(context.Background(), greedy(400, "The people"), func(*tandemv1.GenerateResponse) error {
		chunks++
		if chunks == 2 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || chunks != 2 {
		t.Fatalf("got %v after %d chunks, want the callback's error after 2", err, chunks)
	}

	ctx, cancel := context.WithCancel(context.Background())
	err = client.GenerateStream(ctx, greedy(400, "The people"), func(*tandemv1.GenerateResponse) error {
		cancel()
		return nil
	})
	if status.Code(err) != codes.Canceled {
		t.Fatalf("cancelled context gave %v, want Canceled", err)
	}
}

func TestDeadlineExceeded(t *testing.T) {
	client := liveClient(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err := client.Generate(ctx, greedy(400, "The people"))
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
}

func TestInvalidArgumentCarriesTheField(t *testing.T) {
	client := liveClient(t)
	_, err := client.Generate(context.Background(), greedy(0, "x"))
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("got %v, want InvalidArgument", err)
	}
	if got := status.Convert(err).Message(); !strings.Contains(got, "max_tokens") {
		t.Fatalf("message %q does not name the field", got)
	}
}

func TestComputeLogprobs(t *testing.T) {
	client := liveClient(t)
	reply, err := client.ComputeLogprobs(context.Background(), "base", []uint32{5, 6, 7}, []uint32{8, 9})
	if err != nil {
		t.Fatal(err)
	}
	if len(reply.GetSequences()) != 2 || len(reply.GetSequences()[0].GetLogprobs()) != 3 || reply.GetAdapterVersion() != 0 {
		t.Fatalf("logprobs %v", reply)
	}
}

func TestUnreachableServerIsUnavailableAfterRetries(t *testing.T) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := listener.Addr().String()
	listener.Close()
	client, err := tandem.New(addr, tandem.WithRetry(tandem.RetryPolicy{MaxAttempts: 3, InitialBackoff: 50 * time.Millisecond, MaxBackoff: time.Second, Multiplier: 2}))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.GetModel(context.Background()); status.Code(err) != codes.Unavailable {
		t.Fatalf("got %v, want Unavailable", err)
	}
}

func TestOptionsAreChecked(t *testing.T) {
	if _, err := tandem.New("127.0.0.1:1", tandem.WithTLSFiles("", "client.crt", "")); err == nil {
		t.Fatal("a client certificate without its key was accepted")
	}
	if _, err := tandem.New("127.0.0.1:1", tandem.WithRetry(tandem.RetryPolicy{})); err == nil {
		t.Fatal("MaxAttempts 0 was accepted")
	}
}

// TestMutualTLSAndToken runs against a server that demands a client certificate and a token:
// $TANDEM_SECURE_ADDR with $TANDEM_CA_FILE, $TANDEM_CERT_FILE, $TANDEM_KEY_FILE and $TANDEM_TOKEN.
func TestMutualTLSAndToken(t *testing.T) {
	addr := os.Getenv("TANDEM_SECURE_ADDR")
	if addr == "" {
		t.Skip("TANDEM_SECURE_ADDR is not set (tests/clients/test_go_client.py sets it)")
	}
	tlsFiles := tandem.WithTLSFiles(os.Getenv("TANDEM_CA_FILE"), os.Getenv("TANDEM_CERT_FILE"), os.Getenv("TANDEM_KEY_FILE"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	client, err := tandem.New(addr, tlsFiles, tandem.WithToken(os.Getenv("TANDEM_TOKEN")))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if model, err := client.GetModel(ctx); err != nil || model != nil {
		t.Fatalf("GetModel over mutual TLS with the token: %v, %v (want no model, no error)", model, err)
	}

	anonymous, err := tandem.New(addr, tlsFiles)
	if err != nil {
		t.Fatal(err)
	}
	defer anonymous.Close()
	if _, err := anonymous.GetModel(ctx); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("without the token: %v, want Unauthenticated", err)
	}
}

func TestTokenizeDetokenize(t *testing.T) {
	client := liveClient(t)
	ctx := context.Background()
	model, err := client.GetModel(ctx)
	if err != nil {
		t.Fatal(err)
	}
	results, err := client.Tokenize(ctx, &tandemv1.TokenizeRequest{Inputs: tandem.TextInputs("The people", "A cat"), ReturnOffsets: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 2 || results[0].GetIds()[0] != model.GetSpecialTokens().GetBosTokenId() || len(results[0].GetOffsets()) != len(results[0].GetIds()) {
		t.Fatalf("tokenized %v", results)
	}
	texts, err := client.Detokenize(ctx, true, results[0].GetIds(), results[1].GetIds())
	if err != nil {
		t.Fatal(err)
	}
	if len(texts) != 2 || texts[0] != "The people" || texts[1] != "A cat" {
		t.Fatalf("detokenized %q", texts)
	}
	_, err = client.Detokenize(ctx, false, []uint32{model.GetVocabSize()})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "outside the vocabulary") {
		t.Fatalf("got %v, want InvalidArgument naming the vocabulary", err)
	}
}

// recordingServer is an in-process TandemService whose Generate records each
// request and answers every prompt with one sample of tokens 7, 8: as one
// event when the request asks for whole samples, else one event per token.
type recordingServer struct {
	tandemv1.UnimplementedTandemServiceServer
	mu       sync.Mutex
	requests []*tandemv1.GenerateRequest
}

func (s *recordingServer) Generate(req *tandemv1.GenerateRequest, stream grpc.ServerStreamingServer[tandemv1.GenerateResponse]) error {
	s.mu.Lock()
	s.requests = append(s.requests, req)
	s.mu.Unlock()
	for i := range req.GetPrompts() {
		events := []*tandemv1.GenerateResponse{{TokenIds: []uint32{7}, Text: "a"}, {TokenIds: []uint32{8}, Text: "b"}}
		if req.GetWholeSamples() {
			events = []*tandemv1.GenerateResponse{{TokenIds: []uint32{7, 8}, Text: "ab"}}
		}
		last := events[len(events)-1]
		last.FinishReason = tandemv1.FinishReason_FINISH_REASON_LENGTH
		last.Usage = &tandemv1.Usage{PromptTokens: 3, CompletionTokens: 2}
		for _, event := range events {
			event.PromptIndex = uint32(i)
			if err := stream.Send(event); err != nil {
				return err
			}
		}
	}
	return nil
}

// received returns the Generate requests the server has seen, in order.
func (s *recordingServer) received() []*tandemv1.GenerateRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*tandemv1.GenerateRequest(nil), s.requests...)
}

// recordingClient starts a recordingServer on a local port and connects to it.
func recordingClient(t *testing.T) (*tandem.Client, *recordingServer) {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fake := &recordingServer{}
	server := grpc.NewServer()
	tandemv1.RegisterTandemServiceServer(server, fake)
	go server.Serve(listener)
	t.Cleanup(server.Stop)
	client, err := tandem.New(listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client, fake
}

func TestGenerateAsksForWholeSamplesOnACopy(t *testing.T) {
	client, fake := recordingClient(t)
	ctx := context.Background()
	req := greedy(2, "The people", "A cat")
	asked := proto.Clone(req)

	completions, err := client.Generate(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if len(completions) != 2 || completions[1].PromptIndex != 1 || completions[0].Text != "ab" || len(completions[0].TokenIDs) != 2 ||
		completions[0].FinishReason != tandemv1.FinishReason_FINISH_REASON_LENGTH || completions[0].CompletionTokens != 2 {
		t.Fatalf("completions %+v", completions)
	}
	if !proto.Equal(req, asked) {
		t.Fatalf("Generate changed the caller's request to %v", req)
	}
	sent := fake.received()[0]
	if !sent.GetWholeSamples() {
		t.Fatalf("Generate sent %v without whole_samples", sent)
	}
	if sent.WholeSamples = false; !proto.Equal(sent, asked) {
		t.Fatalf("Generate sent %v, want the caller's %v with whole_samples", sent, asked)
	}

	if _, err := client.Generate(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if sent := fake.received()[1]; !sent.GetWholeSamples() {
		t.Fatalf("Generate(nil) sent %v without whole_samples", sent)
	}
}

func TestGenerateStreamSendsTheRequestAsItIs(t *testing.T) {
	client, fake := recordingClient(t)
	for _, whole := range []bool{false, true} {
		req := greedy(2, "The people")
		req.WholeSamples = whole
		events := 0
		err := client.GenerateStream(context.Background(), req, func(*tandemv1.GenerateResponse) error {
			events++
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		sent := fake.received()
		if got := sent[len(sent)-1]; !proto.Equal(got, req) {
			t.Fatalf("GenerateStream sent %v, want %v", got, req)
		}
		if want := map[bool]int{false: 2, true: 1}[whole]; events != want {
			t.Fatalf("whole_samples=%v: %d events, want %d", whole, events, want)
		}
	}
}
