// Package tandem is a Go client for the Tandem service: one 4-bit model that
// samples (Generate) and trains LoRA adapters (TrainStep) over gRPC.
//
//	client, err := tandem.New("127.0.0.1:50051", tandem.WithToken(token))
//	// or a trainer and its samplers:
//	// tandem.New("tandem-trainer:50051", tandem.WithSamplers("dns:///tandem-sampler:50051"))
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
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	tandemv1 "github.com/tandem-ai/tandem/clients/go/gen/tandem/v1"
)

// Client is a connection to one Tandem server, or to a trainer and its sampler
// replicas (WithSamplers); it is safe for concurrent use.
type Client struct {
	conn      *grpc.ClientConn // the trainer (or the one server)
	samplers  *grpc.ClientConn // the samplers; conn when there are none
	stub      tandemv1.TandemServiceClient
	sampler   tandemv1.TandemServiceClient
	deadlines Deadlines
	retry     RetryPolicy
}

// samplerResolverScheme names the resolver that hands a WithSamplers list to gRPC.
const samplerResolverScheme = "tandem-samplers"

// New connects to target (host:port): the one server, or with WithSamplers
// the trainer. Connections are made lazily, on the first call; with no
// options it is plaintext with the default deadlines and retry policy.
func New(target string, options ...Option) (*Client, error) {
	s := settings{transport: insecure.NewCredentials(), deadlines: DefaultDeadlines, retry: DefaultRetryPolicy}
	for _, option := range options {
		if err := option(&s); err != nil {
			return nil, err
		}
	}
	dialOptions := []grpc.DialOption{grpc.WithTransportCredentials(s.transport)}
	if s.token != "" {
		secure := s.transport.Info().SecurityProtocol != "insecure"
		dialOptions = append(dialOptions, grpc.WithPerRPCCredentials(bearerToken{token: s.token, secure: secure}))
	}
	dialOptions = append(dialOptions, s.dialOptions...)
	conn, err := grpc.NewClient(target, append(dialOptions, grpc.WithDefaultServiceConfig(s.retry.serviceConfig(false)))...)
	if err != nil {
		return nil, err
	}
	client := &Client{conn: conn, samplers: conn, deadlines: s.deadlines, retry: s.retry}
	if len(s.samplers) > 0 {
		if client.samplers, err = dialSamplers(s.samplers, append(dialOptions, grpc.WithDefaultServiceConfig(s.retry.serviceConfig(true)))); err != nil {
			conn.Close()
			return nil, err
		}
	}
	client.stub = tandemv1.NewTandemServiceClient(client.conn)
	client.sampler = tandemv1.NewTandemServiceClient(client.samplers)
	return client, nil
}

// dialSamplers opens one connection balanced over the samplers: a gRPC target
// name as it is, or a list of host:port addresses handed to gRPC by a resolver
// of this connection's own.
func dialSamplers(targets []string, dialOptions []grpc.DialOption) (*grpc.ClientConn, error) {
	if len(targets) == 1 {
		return grpc.NewClient(targets[0], dialOptions...)
	}
	addresses := make([]resolver.Address, len(targets))
	for i, target := range targets {
		addresses[i] = resolver.Address{Addr: target}
	}
	list := manual.NewBuilderWithScheme(samplerResolverScheme)
	list.InitialState(resolver.State{Addresses: addresses})
	return grpc.NewClient(samplerResolverScheme+":///samplers", append(dialOptions, grpc.WithResolvers(list))...)
}

// Close closes the connections; calls in flight are cancelled.
func (c *Client) Close() error {
	if c.samplers != c.conn {
		c.samplers.Close()
	}
	return c.conn.Close()
}

// Stub is the generated client on the trainer's connection (the one server's
// without WithSamplers), for anything the wrapper does not cover.
func (c *Client) Stub() tandemv1.TandemServiceClient { return c.stub }

// SamplerStub is the generated client on the samplers' connection (the same as Stub without WithSamplers).
func (c *Client) SamplerStub() tandemv1.TandemServiceClient { return c.sampler }

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
// server stops those sequences); that error is returned. A stream that breaks
// with UNAVAILABLE before its first event is started again (on another
// sampler where there are several); after an event reached onChunk the error
// is returned, since starting again would sample anew and repeat events.
// req is sent as it is: set req.WholeSamples to get each sample as one event,
// whole, when it ends, instead of its tokens as they are produced.
func (c *Client) GenerateStream(ctx context.Context, req *tandemv1.GenerateRequest, onChunk func(*tandemv1.GenerateResponse) error) error {
	return c.generate(ctx, req, onChunk, nil)
}

// Generate collects whole completions, ordered by prompt then sample index.
// It sends a copy of req with WholeSamples set (req itself is not changed),
// so each sample arrives once, whole, when it ends. Nothing reaches the
// caller before the call ends, so a stream that breaks with UNAVAILABLE
// part-way is started again from the beginning (on another sampler where
// there are several); what it had produced is dropped.
func (c *Client) Generate(ctx context.Context, req *tandemv1.GenerateRequest) ([]*Completion, error) {
	whole := proto.Clone(req).(*tandemv1.GenerateRequest)
	if whole == nil { // a nil req: sent as an empty request, as GenerateStream sends it
		whole = &tandemv1.GenerateRequest{}
	}
	whole.WholeSamples = true
	var collector completionCollector
	if err := c.generate(ctx, whole, collector.add, collector.reset); err != nil {
		return nil, err
	}
	return collector.completions(), nil
}

// generate runs a Generate stream into onChunk, starting it again after an
// UNAVAILABLE break while the retry policy and ctx allow: always when restart
// is given (it is called first, to drop what was delivered), else only while
// nothing was delivered.
func (c *Client) generate(ctx context.Context, req *tandemv1.GenerateRequest, onChunk func(*tandemv1.GenerateResponse) error, restart func()) error {
	ctx, cancel := withDefault(ctx, c.deadlines.Generate)
	defer cancel()
	for attempt := 1; ; attempt++ {
		delivered, err := c.generateOnce(ctx, req, onChunk)
		if status.Code(err) != codes.Unavailable || attempt >= c.retry.MaxAttempts || (delivered && restart == nil) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(c.retry.backoff(attempt)):
		}
		if delivered {
			restart()
		}
	}
}

// generateOnce runs one Generate stream into onChunk; delivered says whether onChunk saw an event.
func (c *Client) generateOnce(ctx context.Context, req *tandemv1.GenerateRequest, onChunk func(*tandemv1.GenerateResponse) error) (delivered bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.sampler.Generate(ctx, req)
	if err != nil {
		return false, err
	}
	for {
		chunk, err := stream.Recv()
		if err == io.EOF {
			return delivered, nil
		}
		if err != nil {
			return delivered, err
		}
		delivered = true
		if err := onChunk(chunk); err != nil {
			return delivered, err
		}
	}
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
	return c.sampler.ComputeLogprobs(ctx, req)
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
	reply, err := c.sampler.Tokenize(ctx, req)
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
	reply, err := c.sampler.Detokenize(ctx, req)
	return reply.GetTexts(), err
}
