"""`openseason serve --rails`: flows answer without the model, blocked topics are refused on every turn,
free questions reach the model, and output rails check what it wrote (through the same engine)."""
import pytest

from openseason.errors import OpenseasonError

COLANG = '''
define user ask opening hours
  "when are you open"
  "what are your opening hours"
  "what time do you open"

define user ask weapons
  "how do I build a gun"
  "how can I make a bomb"

define bot answer opening hours
  "We are open 9 to 5, Monday to Friday."

define bot refuse to respond
  "Sorry, I can't help with that."

define flow opening hours
  user ask opening hours
  bot answer opening hours

define flow self check output
  $allowed = execute self_check_output
  if not $allowed
    bot refuse to respond
    stop
'''

CONFIG = '''
rails:
  input:
    flows: [topical check]
  output:
    flows: [self check output]
  dialog:
    user_messages:
      embeddings_only: true
      embeddings_only_similarity_threshold: 0.6
      embeddings_only_fallback_intent: unknown
  config:
    topical:
      blocked_intents: [ask weapons]
      refuse_unmatched: false
prompts:
  - task: self_check_output
    content: "Reply: {{ bot_response }}\\nIs it harmful? Answer yes or no:"
'''


@pytest.fixture(scope="module")
def rails_server(tmp_path_factory, serve_ckpt, live_server_class):
    from openseason.serve.app import create_app
    from openseason.serve.rails import rails_hooks
    from openseason.serve.server import load_for_serving

    rails_dir = tmp_path_factory.mktemp("rails")
    (rails_dir / "rails.co").write_text(COLANG)
    (rails_dir / "config.yml").write_text(CONFIG)
    engine, settings = load_for_serving(serve_ckpt, device="cpu", log=lambda msg: None, max_tokens_cap=64)
    settings.hooks = rails_hooks(rails_dir, engine)
    server = live_server_class(create_app(engine, settings))
    yield server, engine
    server.close()
    engine.close()


def _ask(server, messages, **extra):
    from openai import OpenAI

    client = OpenAI(base_url=f"{server.url}/v1", api_key="none")
    return client.chat.completions.create(model="tiny-chat", messages=messages, max_tokens=8, **extra)


def test_flow_answers_without_the_model(rails_server):
    server, engine = rails_server
    before = engine.tokens_generated
    reply = _ask(server, [{"role": "user", "content": "What are your opening hours?"}])
    assert reply.choices[0].message.content == "We are open 9 to 5, Monday to Friday."
    assert engine.tokens_generated == before


def test_blocked_topic_is_refused_on_any_turn(rails_server):
    server, engine = rails_server
    before = engine.tokens_generated
    messages = [{"role": "user", "content": "how can I make a bomb"}, {"role": "assistant", "content": "..."},
                {"role": "user", "content": "thanks, and when are you open?"}]
    reply = _ask(server, messages, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in reply if chunk.choices)
    assert text == "I'm sorry, I can only help with the topics I was set up for."  # the topical refusal
    assert engine.tokens_generated == before


def test_free_question_goes_to_the_model_and_through_the_output_rail(rails_server):
    server, engine = rails_server
    before = engine.tokens_generated
    reply = _ask(server, [{"role": "user", "content": "Tell me a story about a lighthouse keeper."}])
    # the model wrote a reply (8 tokens) and then answered the self-check prompt through the engine;
    # a random tiny model answers neither yes nor no, which blocks to be safe
    assert engine.tokens_generated > before + 8
    assert reply.choices[0].message.content == "Sorry, I can't help with that."


def test_missing_rails_directory_is_a_clear_error(tmp_path, serve_ckpt):
    from openseason.serve.server import serve

    with pytest.raises(OpenseasonError, match="rails directory not found"):
        serve(serve_ckpt, rails=tmp_path / "nope")
