package tandem_test

import (
	"bufio"
	"context"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"

	tandem "github.com/tandem-ai/tandem/clients/go"
	tandemv1 "github.com/tandem-ai/tandem/clients/go/gen/tandem/v1"
)

// metric sums the samples of one series name in a server's /metrics whose
// labels include every given `key="value"` pair.
func metric(t *testing.T, url, name string, labels ...string) float64 {
	t.Helper()
	reply, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer reply.Body.Close()
	total := 0.0
	lines := bufio.NewScanner(reply.Body)
	for lines.Scan() {
		line := lines.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		matches := true
		for _, label := range labels {
			matches = matches && strings.Contains(line, label)
		}
		if fields := strings.Fields(line); matches {
			value, err := strconv.ParseFloat(fields[len(fields)-1], 64)
			if err != nil {
				t.Fatal(err)
			}
			total += value
		}
	}
	return total
}

// waitFor polls condition every 20 ms for up to a minute.
func waitFor(t *testing.T, what string, condition func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !condition(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// streamCounter counts the Generate streams (each attempt) a client sends.
type streamCounter struct{ streams *atomic.Int32 }

func (c streamCounter) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	if info.FullMethodName == tandemv1.TandemService_Generate_FullMethodName {
		c.streams.Add(1)
	}
	return ctx
}
func (streamCounter) HandleRPC(context.Context, stats.RPCStats)                         {}
func (streamCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (streamCounter) HandleConn(context.Context, stats.ConnStats)                       {}

// TestSamplerReplicasSpreadAndSurviveAKill runs against two live servers:
// $TANDEM_SAMPLERS (their addresses, comma-separated), and of the second its
// process id $TANDEM_VICTIM_PID and metrics URL $TANDEM_VICTIM_METRICS. It
// kills that one with SIGKILL while it decodes Generate calls.
func TestSamplerReplicasSpreadAndSurviveAKill(t *testing.T) {
	addrs := strings.Split(os.Getenv("TANDEM_SAMPLERS"), ",")
	victimMetrics := os.Getenv("TANDEM_VICTIM_METRICS")
	victim, err := strconv.Atoi(os.Getenv("TANDEM_VICTIM_PID"))
	if len(addrs) != 2 || victimMetrics == "" || err != nil {
		t.Skip("TANDEM_SAMPLERS, TANDEM_VICTIM_PID and TANDEM_VICTIM_METRICS are not set (tests/clients/test_go_client.py sets them)")
	}
	// Generate streams sent to a server, each restart included: the client's
	// own, and gRPC's retry of a stream that broke before its first response
	// (a Generate with whole samples has none until a sample ends).
	var streams atomic.Int32
	client, err := tandem.New(addrs[0], tandem.WithSamplers(addrs...), tandem.WithDialOptions(grpc.WithStatsHandler(streamCounter{&streams})))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx := context.Background()

	generateOK := func() float64 {
		return metric(t, victimMetrics, "tandem_requests_total", `rpc="Generate"`, `code="OK"`)
	}
	for i := 0; i < 8; i++ {
		if _, err := client.Generate(ctx, greedy(2, "The people")); err != nil {
			t.Fatal(err)
		}
	}
	if served := generateOK(); served < 2 {
		t.Fatalf("the second replica served %v of 8 calls: round_robin did not spread them", served)
	}

	const calls, tokens = 4, 300
	var wg sync.WaitGroup
	results := make([][]*tandem.Completion, calls)
	errs := make([]error, calls)
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = client.Generate(ctx, greedy(tokens, "The people"))
		}()
	}
	generated := metric(t, victimMetrics, "tandem_generated_tokens_total")
	waitFor(t, "the second replica to decode", func() bool {
		return metric(t, victimMetrics, "tandem_generated_tokens_total") >= generated+20
	})
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for i := range calls {
		if errs[i] != nil || len(results[i]) != 1 || len(results[i][0].TokenIDs) != tokens {
			t.Fatalf("call %d: %v, %d completions", i, errs[i], len(results[i]))
		}
	}
	if opened := streams.Load(); opened <= 8+calls {
		t.Fatalf("%d Generate streams for %d calls: none broken by the kill was started again", opened, 8+calls)
	}
	for i := 0; i < 4; i++ {
		if _, err := client.Generate(ctx, greedy(2, "The people")); err != nil {
			t.Fatalf("after the kill: %v", err)
		}
	}
}
