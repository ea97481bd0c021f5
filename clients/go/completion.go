package tandem

import (
	"sort"

	tandemv1 "github.com/tandem-ai/tandem/clients/go/gen/tandem/v1"
)

// Completion is one finished sample: everything its stream events carried, joined.
type Completion struct {
	PromptIndex      uint32
	SampleIndex      uint32
	Text             string
	TokenIDs         []uint32
	Logprobs         []float32 // of each generated token; empty unless requested
	FinishReason     tandemv1.FinishReason
	PromptTokens     uint32
	CompletionTokens uint32
	AdapterVersion   uint64 // the adapter (policy) version that produced the sample
}

func (c *Completion) add(chunk *tandemv1.GenerateResponse) {
	c.Text += chunk.GetText()
	c.TokenIDs = append(c.TokenIDs, chunk.GetTokenIds()...)
	for _, lp := range chunk.GetLogprobs() {
		c.Logprobs = append(c.Logprobs, lp.GetLogprob())
	}
	c.AdapterVersion = chunk.GetAdapterVersion()
	if chunk.GetFinishReason() != tandemv1.FinishReason_FINISH_REASON_UNSPECIFIED {
		c.FinishReason = chunk.GetFinishReason()
		c.PromptTokens = chunk.GetUsage().GetPromptTokens()
		c.CompletionTokens = chunk.GetUsage().GetCompletionTokens()
	}
}

type sampleKey struct{ prompt, sample uint32 }

// completionCollector joins stream events into per-sample completions.
type completionCollector struct {
	bySample map[sampleKey]*Completion
}

func (cc *completionCollector) add(chunk *tandemv1.GenerateResponse) error {
	if cc.bySample == nil {
		cc.bySample = map[sampleKey]*Completion{}
	}
	key := sampleKey{chunk.GetPromptIndex(), chunk.GetSampleIndex()}
	completion, ok := cc.bySample[key]
	if !ok {
		completion = &Completion{PromptIndex: key.prompt, SampleIndex: key.sample}
		cc.bySample[key] = completion
	}
	completion.add(chunk)
	return nil
}

// reset drops everything collected (a broken stream's partial samples).
func (cc *completionCollector) reset() { cc.bySample = nil }

func (cc *completionCollector) completions() []*Completion {
	out := make([]*Completion, 0, len(cc.bySample))
	for _, completion := range cc.bySample {
		out = append(out, completion)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].PromptIndex != out[j].PromptIndex {
			return out[i].PromptIndex < out[j].PromptIndex
		}
		return out[i].SampleIndex < out[j].SampleIndex
	})
	return out
}

// TextPrompts builds text prompts for a GenerateRequest.
func TextPrompts(texts ...string) []*tandemv1.Prompt {
	prompts := make([]*tandemv1.Prompt, len(texts))
	for i, text := range texts {
		prompts[i] = &tandemv1.Prompt{Input: &tandemv1.Prompt_Text{Text: text}}
	}
	return prompts
}
