package tandem

import (
	"encoding/json"
	"testing"
)

func TestServiceConfigRetriesUnavailableOnly(t *testing.T) {
	var config struct {
		MethodConfig []struct {
			Name        []map[string]string `json:"name"`
			RetryPolicy struct {
				MaxAttempts          int      `json:"maxAttempts"`
				InitialBackoff       string   `json:"initialBackoff"`
				RetryableStatusCodes []string `json:"retryableStatusCodes"`
			} `json:"retryPolicy"`
		} `json:"methodConfig"`
	}
	if err := json.Unmarshal([]byte(DefaultRetryPolicy.serviceConfig()), &config); err != nil {
		t.Fatal(err)
	}
	method := config.MethodConfig[0]
	if method.Name[0]["service"] != "tandem.v1.TandemService" || method.RetryPolicy.MaxAttempts != 5 || method.RetryPolicy.InitialBackoff != "0.200s" {
		t.Fatalf("service config %+v", config)
	}
	if codes := method.RetryPolicy.RetryableStatusCodes; len(codes) != 1 || codes[0] != "UNAVAILABLE" {
		t.Fatalf("retryable codes %v, want only UNAVAILABLE", codes)
	}
	if (RetryPolicy{MaxAttempts: 1}).serviceConfig() != "{}" {
		t.Fatal("MaxAttempts 1 should turn retries off")
	}
}
