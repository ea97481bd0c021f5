package tandem

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Option configures a Client; pass any number to New.
type Option func(*settings) error

// Deadlines are the default time limits per kind of call, applied when the
// caller's context has no deadline of its own.
type Deadlines struct {
	Call      time.Duration // GetModel, UnloadModel, ComputeLogprobs and the adapter RPCs
	Generate  time.Duration // a whole Generate stream
	TrainStep time.Duration // one TrainStep
	LoadModel time.Duration // a whole LoadModel stream
}

// DefaultDeadlines match the Python client's: loading takes minutes on a GPU.
var DefaultDeadlines = Deadlines{Call: time.Minute, Generate: 10 * time.Minute, TrainStep: 10 * time.Minute, LoadModel: time.Hour}

// RetryPolicy retries calls that fail with UNAVAILABLE, with exponential
// backoff: gRPC's own retry support, where each retry goes to the replica the
// balancer picks next; streams are retried only before their first response.
// On top of that, a Generate stream that breaks with UNAVAILABLE before any
// event reached the caller's callback is started again (Generate, which
// returns only whole completions, starts again whenever it breaks), up to
// MaxAttempts times, within the context's deadline. MaxAttempts counts the
// first attempt; gRPC caps it at 5.
type RetryPolicy struct {
	MaxAttempts    int
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	Multiplier     float64
}

// DefaultRetryPolicy: 5 attempts, 0.2 s doubling up to 5 s.
var DefaultRetryPolicy = RetryPolicy{MaxAttempts: 5, InitialBackoff: 200 * time.Millisecond, MaxBackoff: 5 * time.Second, Multiplier: 2}

type settings struct {
	token       string
	transport   credentials.TransportCredentials
	deadlines   Deadlines
	retry       RetryPolicy
	samplers    []string
	dialOptions []grpc.DialOption
}

// WithSamplers sends Generate, ComputeLogprobs, Tokenize and Detokenize to
// sampler replicas instead of the target, which is then the trainer (every
// other call goes there). One target is a gRPC target name, balanced by gRPC's
// round_robin policy over every address it resolves to (for a Kubernetes
// headless Service: "dns:///tandem-sampler.NAMESPACE.svc:50051"); several are
// host:port addresses, balanced the same way over one connection. A call that
// fails with UNAVAILABLE is retried on the next replica the policy picks.
func WithSamplers(targets ...string) Option {
	return func(s *settings) error {
		if len(targets) == 0 {
			return fmt.Errorf("tandem: WithSamplers needs at least one target")
		}
		s.samplers = targets
		return nil
	}
}

// WithToken sends "authorization: Bearer <token>" on every call.
func WithToken(token string) Option {
	return func(s *settings) error {
		s.token = token
		return nil
	}
}

// WithTLS connects over TLS with the given configuration (mutual TLS when it
// carries a client certificate). Without it the connection is plaintext.
func WithTLS(config *tls.Config) Option {
	return func(s *settings) error {
		s.transport = credentials.NewTLS(config)
		return nil
	}
}

// WithTLSFiles connects over TLS, trusting the CA in caFile (the system roots
// when empty) and, when certFile and keyFile are given, presenting that client
// certificate (mutual TLS).
func WithTLSFiles(caFile, certFile, keyFile string) Option {
	return func(s *settings) error {
		config := &tls.Config{MinVersion: tls.VersionTLS12}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return fmt.Errorf("tandem: reading CA certificate: %w", err)
			}
			config.RootCAs = x509.NewCertPool()
			if !config.RootCAs.AppendCertsFromPEM(pem) {
				return fmt.Errorf("tandem: no certificate found in %s", caFile)
			}
		}
		if (certFile == "") != (keyFile == "") {
			return fmt.Errorf("tandem: mutual TLS needs both a client certificate and its key")
		}
		if certFile != "" {
			pair, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				return fmt.Errorf("tandem: loading client certificate: %w", err)
			}
			config.Certificates = []tls.Certificate{pair}
		}
		s.transport = credentials.NewTLS(config)
		return nil
	}
}

// WithDeadlines replaces the default time limits per kind of call.
func WithDeadlines(deadlines Deadlines) Option {
	return func(s *settings) error {
		s.deadlines = deadlines
		return nil
	}
}

// WithRetry replaces the retry policy for UNAVAILABLE; MaxAttempts 1 turns retries off.
func WithRetry(policy RetryPolicy) Option {
	return func(s *settings) error {
		if policy.MaxAttempts < 1 {
			return fmt.Errorf("tandem: MaxAttempts must be at least 1")
		}
		s.retry = policy
		return nil
	}
}

// WithDialOptions adds gRPC dial options (interceptors, keepalive, ...).
func WithDialOptions(options ...grpc.DialOption) Option {
	return func(s *settings) error {
		s.dialOptions = append(s.dialOptions, options...)
		return nil
	}
}

// backoff is the wait before retry number retry (1-based): as gRPC's own, capped, with jitter in [50 %, 100 %].
func (p RetryPolicy) backoff(retry int) time.Duration {
	ceiling := math.Min(float64(p.MaxBackoff), float64(p.InitialBackoff)*math.Pow(p.Multiplier, float64(retry-1)))
	return time.Duration(ceiling * (0.5 + rand.Float64()/2))
}

// serviceConfig is the gRPC service config that retries UNAVAILABLE on every
// TandemService method and, when balanced, spreads calls with round_robin.
func (p RetryPolicy) serviceConfig(balanced bool) string {
	config := map[string]any{}
	if balanced {
		config["loadBalancingConfig"] = []any{map[string]any{"round_robin": map[string]any{}}}
	}
	if p.MaxAttempts >= 2 {
		config["methodConfig"] = []any{map[string]any{
			"name": []any{map[string]string{"service": "tandem.v1.TandemService"}},
			"retryPolicy": map[string]any{
				"maxAttempts":          p.MaxAttempts,
				"initialBackoff":       fmt.Sprintf("%.3fs", p.InitialBackoff.Seconds()),
				"maxBackoff":           fmt.Sprintf("%.3fs", p.MaxBackoff.Seconds()),
				"backoffMultiplier":    p.Multiplier,
				"retryableStatusCodes": []string{"UNAVAILABLE"},
			},
		}}
	}
	encoded, _ := json.Marshal(config) // maps of strings and numbers always encode
	return string(encoded)
}

// bearerToken puts the token into every call's metadata.
type bearerToken struct {
	token  string
	secure bool
}

func (b bearerToken) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

// RequireTransportSecurity is false for plaintext connections (local development); the
// token then travels in the clear, as with the Python client.
func (b bearerToken) RequireTransportSecurity() bool { return b.secure }
