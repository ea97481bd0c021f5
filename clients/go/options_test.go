package tandem

import (
	"encoding/json"
	"testing"
	"time"
)

// serviceConfigJSON is the part of a gRPC service config the client writes.
type serviceConfigJSON struct {
	LoadBalancingConfig []map[string]any `json:"loadBalancingConfig"`
	MethodConfig        []struct {
		Name        []map[string]string `json:"name"`
		RetryPolicy struct {
			MaxAttempts          int      `json:"maxAttempts"`
			InitialBackoff       string   `json:"initialBackoff"`
			RetryableStatusCodes []string `json:"retryableStatusCodes"`
		} `json:"retryPolicy"`
	} `json:"methodConfig"`
}

func parseServiceConfig(t *testing.T, encoded string) serviceConfigJSON {
	t.Helper()
	var config serviceConfigJSON
	if err := json.Unmarshal([]byte(encoded), &config); err != nil {
		t.Fatal(err)
	}
	return config
}

func TestServiceConfigRetriesUnavailableOnly(t *testing.T) {
	config := parseServiceConfig(t, DefaultRetryPolicy.serviceConfig(false))
	method := config.MethodConfig[0]
	if method.Name[0]["service"] != "tandem.v1.TandemService" || method.RetryPolicy.MaxAttempts != 5 || method.RetryPolicy.InitialBackoff != "0.200s" {
		t.Fatalf("service config %+v", config)
	}
	if codes := method.RetryPolicy.RetryableStatusCodes; len(codes) != 1 || codes[0] != "UNAVAILABLE" {
		t.Fatalf("retryable codes %v, want only UNAVAILABLE", codes)
	}
	if config.LoadBalancingConfig != nil {
		t.Fatalf("the trainer's connection is not balanced: %v", config.LoadBalancingConfig)
	}
	if (RetryPolicy{MaxAttempts: 1}).serviceConfig(false) != "{}" {
		t.Fatal("MaxAttempts 1 should turn retries off")
	}
}

func TestSamplerServiceConfigBalancesWithRoundRobin(t *testing.T) {
	for _, policy := range []RetryPolicy{DefaultRetryPolicy, {MaxAttempts: 1}} {
		config := parseServiceConfig(t, policy.serviceConfig(true))
		if len(config.LoadBalancingConfig) != 1 || config.LoadBalancingConfig[0]["round_robin"] == nil {
			t.Fatalf("sampler service config %+v, want round_robin", config)
		}
	}
}

func TestBackoffGrowsWithJitterUpToTheCap(t *testing.T) {
	policy := RetryPolicy{MaxAttempts: 5, InitialBackoff: 100 * time.Millisecond, MaxBackoff: 300 * time.Millisecond, Multiplier: 2}
	for retry, ceiling := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 3: 300 * time.Millisecond, 4: 300 * time.Millisecond} {
		if wait := policy.backoff(retry); wait < ceiling/2 || wait > ceiling {
			t.Fatalf("retry %d waits %v, want within [%v, %v]", retry, wait, ceiling/2, ceiling)
		}
	}
}
