// Package tandem is a Go client for the Tandem service: one 4-bit model that
// samples (Generate) and trains LoRA adapters (TrainStep) over gRPC.
//
//	client, err := tandem.New("127.0.0.1:50051", tandem.WithToken(token))
//	if err != nil { ... }
//	defer client.Close()
//	model, err := client.LoadModel(ctx, &tandemv1.LoadModelRequest{}, nil)
//	completions, err := client.Generate(ctx, &tandemv1.GenerateRequest{...})
//	reply, err := client.TrainStep(ctx, &tandemv1.TrainStepRequest{...})
//
// Every method takes a context first; when it has no deadline the client's
// default for that kind of call applies. Errors are gRPC status errors: use
// status.Code(err) to tell codes.InvalidArgument from codes.Unavailable and
// so on. The generated stubs are in the gen/tandem/v1 package (tandemv1).
package tandem

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	tandemv1 "github.com/tandem-ai/tandem/clients/go/gen/tandem/v1"
)

// Client is a connection to one Tandem server; it is safe for concurrent use.
type Client struct {
	conn      *grpc.ClientConn
	stub      tandemv1.TandemServiceClient
	deadlines Deadlines
}

// New connects to target (host:port). The connection is made lazily, on the
// first call; with no options it is plaintext with the default deadlines and
// retry policy.
func New(target string, options ...Option) (*Client, error) {
	s := settings{transport: insecure.NewCredentials(), deadlines: DefaultDeadlines, retry: DefaultRetryPolicy}
	for _, option := range options {
		if err := option(&s); err != nil {
			return nil, err
		}
	}
	dialOptions := []grpc.DialOption{
		grpc.WithTransportCredentials(s.transport),
		grpc.WithDefaultServiceConfig(s.retry.serviceConfig()),
	}
	if s.token != "" {
		secure := s.transport.Info().SecurityProtocol != "insecure"
		dialOptions = append(dialOptions, grpc.WithPerRPCCredentials(bearerToken{token: s.token, secure: secure}))
	}
	conn, err := grpc.NewClient(target, append(dialOptions, s.dialOptions...)...)
	if err != nil {
		return nil, err
	}
	return &Client{conn: conn, stub: tandemv1.NewTandemServiceClient(conn), deadlines: s.deadlines}, nil
}

// Close closes the connection; calls in flight are cancelled.
func (c *Client) Close() error { return c.conn.Close() }

// Stub is the generated client on the same connection, for anything the wrapper does not cover.
func (c *Client) Stub() tandemv1.TandemServiceClient { return c.stub }

// withDefault gives ctx the default deadline when it has none.
func withDefault(ctx context.Context, limit time.Duration) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, limit)
}

// errNoModelEvent: LoadModel's stream ended without the final model event (a server bug).
var errNoModelEvent = errors.New("tandem: LoadModel ended without reporting the loaded model")

// LoadModel loads a model (replacing any loaded one) and returns it; onProgress,
// when not nil, sees every progress event. An empty request loads the
// built-in tiny model with the server's defaults.
func (c *Client) LoadModel(ctx context.Context, req *tandemv1.LoadModelRequest, onProgress func(*tandemv1.LoadProgress)) (*tandemv1.ModelInfo, error) {
	ctx, cancel := withDefault(ctx, c.deadlines.LoadModel)
	defer cancel()
	stream, err := c.stub.LoadModel(ctx, req)
	if err != nil {
		return nil, err
	}
	for {
		event, err := stream.Recv()
		if err == io.EOF {
			return nil, errNoModelEvent
		}
		if err != nil {
			return nil, err
		}
		if model := event.GetModel(); model != nil {
			return model, nil
		}
		if onProgress != nil {
			onProgress(event.GetProgress())
		}
	}
}

// GetModel returns the loaded model, or nil when none is loaded.
func (c *Client) GetModel(ctx context.Context) (*tandemv1.ModelInfo, error) {
	ctx, cancel := withDefault(ctx, c.deadlines.Call)
	defer cancel()
	reply, err := c.stub.GetModel(ctx, &tandemv1.GetModelRequest{})
	if err != nil || !reply.GetLoaded() {
		return nil, err
	}
	return reply.GetModel(), nil
}

// UnloadModel releases the model; it reports whether one was loaded.
func (c *Client) UnloadModel(ctx context.Context) (bool, error) {
	ctx, cancel := withDefault(ctx, c.deadlines.Call)
	defer cancel()
	reply, err := c.stub.UnloadModel(ctx, &tandemv1.UnloadModelRequest{})
	return reply.GetUnloaded(), err
}

// GenerateStream calls onChunk with each Generate event as the engine produces
// it. Returning an error from onChunk, or cancelling ctx, cancels the call (the
// server stops those sequences); that error is returned.
func (c *Client) GenerateStream(ctx context.Context, req *tandemv1.GenerateRequest, onChunk func(*tandemv1.GenerateResponse) error) error {
	ctx, cancel := withDefault(ctx, c.deadlines.Generate)
	defer cancel()
	stream, err := c.stub.Generate(ctx, req)
	if err != nil {
		return err
	}
	for {
		chunk, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := onChunk(chunk); err != nil {
			return err
		}
	}
}

// Generate collects whole completions, ordered by prompt then sample index.
func (c *Client) Generate(ctx context.Context, req *tandemv1.GenerateRequest) ([]*Completion, error) {
	var collector completionCollector
	if err := c.GenerateStream(ctx, req, collector.add); err != nil {
		return nil, err
	}
	return collector.completions(), nil
}

// TrainStep trains on one micro-batch and, unless req.Accumulate, applies an optimizer step.
func (c *Client) TrainStep(ctx context.Context, req *tandemv1.TrainStepRequest) (*tandemv1.TrainStepResponse, error) {
	ctx, cancel := withDefault(ctx, c.deadlines.TrainStep)
	defer cancel()
	return c.stub.TrainStep(ctx, req)
}

// ComputeLogprobs returns per-token logprobs of token sequences under an
// adapter ("" the trained one, "base", or a saved checkpoint's name).
func (c *Client) ComputeLogprobs(ctx context.Context, adapter string, sequences ...[]uint32) (*tandemv1.ComputeLogprobsResponse, error) {
	ctx, cancel := withDefault(ctx, c.deadlines.Call)
	defer cancel()
	req := &tandemv1.ComputeLogprobsRequest{Adapter: adapter}
	for _, ids := range sequences {
		req.Sequences = append(req.Sequences, &tandemv1.TokenIds{Ids: ids})
	}
	return c.stub.ComputeLogprobs(ctx, req)
}

// SaveAdapter saves the trained adapter and optimizer state as checkpoint name.
func (c *Client) SaveAdapter(ctx context.Context, name string, overwrite bool) (*tandemv1.AdapterCheckpoint, error) {
	ctx, cancel := withDefault(ctx, c.deadlines.Call)
	defer cancel()
	reply, err := c.stub.SaveAdapter(ctx, &tandemv1.SaveAdapterRequest{Name: name, Overwrite: overwrite})
	return reply.GetCheckpoint(), err
}

// LoadAdapter restores checkpoint name into the trained adapter and optimizer.
func (c *Client) LoadAdapter(ctx context.Context, name string) (*tandemv1.LoadAdapterResponse, error) {
	ctx, cancel := withDefault(ctx, c.deadlines.Call)
	defer cancel()
	return c.stub.LoadAdapter(ctx, &tandemv1.LoadAdapterRequest{Name: name})
}

// ListAdapters lists the saved checkpoints.
func (c *Client) ListAdapters(ctx context.Context) ([]*tandemv1.AdapterCheckpoint, error) {
	ctx, cancel := withDefault(ctx, c.deadlines.Call)
	defer cancel()
	reply, err := c.stub.ListAdapters(ctx, &tandemv1.ListAdaptersRequest{})
	return reply.GetCheckpoints(), err
}

// DeleteAdapter deletes checkpoint name.
func (c *Client) DeleteAdapter(ctx context.Context, name string) error {
	ctx, cancel := withDefault(ctx, c.deadlines.Call)
	defer cancel()
	_, err := c.stub.DeleteAdapter(ctx, &tandemv1.DeleteAdapterRequest{Name: name})
	return err
}

// TextInputs makes one Tokenize input per text.
func TextInputs(texts ...string) []*tandemv1.TokenizeInput {
	inputs := make([]*tandemv1.TokenizeInput, len(texts))
	for i, text := range texts {
		inputs[i] = &tandemv1.TokenizeInput{Input: &tandemv1.TokenizeInput_Text{Text: text}}
	}
	return inputs
}

// Tokenize returns the served model's token ids for each input (a text, see
// TextInputs, or a chat conversation rendered with the model's chat
// template), in order.
func (c *Client) Tokenize(ctx context.Context, req *tandemv1.TokenizeRequest) ([]*tandemv1.TokenizedInput, error) {
	ctx, cancel := withDefault(ctx, c.deadlines.Call)
	defer cancel()
	reply, err := c.stub.Tokenize(ctx, req)
	return reply.GetResults(), err
}

// Detokenize returns the text of each token id list, in order;
// skipSpecialTokens leaves BOS, EOS, padding ... out of the text.
func (c *Client) Detokenize(ctx context.Context, skipSpecialTokens bool, sequences ...[]uint32) ([]string, error) {
	ctx, cancel := withDefault(ctx, c.deadlines.Call)
	defer cancel()
	req := &tandemv1.DetokenizeRequest{SkipSpecialTokens: skipSpecialTokens}
	for _, ids := range sequences {
		req.Sequences = append(req.Sequences, &tandemv1.TokenIds{Ids: ids})
	}
	reply, err := c.stub.Detokenize(ctx, req)
	return reply.GetTexts(), err
}
