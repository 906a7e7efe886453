"""The built-in chat template of the ERNIE 4.5 Thinking family (``<|im_start|>``/``<|im_end|>`` turns).

Written here from the documented turn structure (the release file is not shipped): a system turn holding the
system text, the tools and a ``<global_setting>`` with ``think_mode``; user turns; assistant turns whose
answer sits in ``<response>`` and whose calls are ``<tool_call>`` JSON lines; ``tool`` turns whose output
sits in ``<tool_output>``. The generation prompt opens ``<think>`` (the model writes its reasoning, then
``</think>``), or, with thinking off, closes an empty think block. Thinking is on unless ``enable_thinking``
(or ``think_mode``) is false.
"""

THINKING_MARKERS = ("<|im_start|>", "<|im_end|>", "<think>", "</think>", "<response>", "</response>",
                    "<tool_call>", "</tool_call>", "<tool_output>", "</tool_output>")

THINKING_CHAT_TEMPLATE = (
    "{%- set thinking = namespace(on=true) -%}\n"
    "{%- if enable_thinking is defined and enable_thinking is not none -%}"
    "{%- set thinking.on = enable_thinking -%}{%- endif -%}\n"
    "{%- if think_mode is defined and think_mode is not none -%}{%- set thinking.on = think_mode -%}{%- endif -%}\n"
    "{%- set system = namespace(text='') -%}\n"
    "{%- if messages and messages[0].role == 'system' -%}{%- set system.text = messages[0].content -%}"
    "{%- endif -%}\n"
    "{{- '<|im_start|>system\\n' -}}\n"
    "{%- if system.text -%}{{- system.text + '\\n' -}}{%- endif -%}\n"
    "{%- if tools -%}\n"
    "{{- 'You may call these tools. To call one, answer with\\n<tool_call>\\n{\"name\": <tool name>, "
    "\"arguments\": <arguments object>}\\n</tool_call>\\n<tool_list>\\n' -}}\n"
    "{%- for tool in tools -%}{{- (tool.function if tool.function is defined else tool) | tojson -}}"
    "{{- '\\n' -}}{%- endfor -%}\n"
    "{{- '</tool_list>\\n' -}}\n"
    "{%- endif -%}\n"
    "{{- '<global_setting>\\nthink_mode=' + ('True' if thinking.on else 'False') + "
    "'\\n</global_setting><|im_end|>\\n\\n' -}}\n"
    "{%- for message in messages -%}\n"
    "{%- if message.role == 'user' -%}\n"
    "{{- '<|im_start|>user\\n' + message.content + '<|im_end|>\\n\\n' -}}\n"
    "{%- elif message.role == 'assistant' -%}\n"
    "{{- '<|im_start|>assistant\\n' -}}\n"
    "{%- if message.content -%}{{- '<response>\\n' + message.content + '\\n</response>' -}}{%- endif -%}\n"
    "{%- for call in message.tool_calls or [] -%}\n"
    "{%- if message.content or not loop.first -%}{{- '\\n' -}}{%- endif -%}\n"
    "{%- set fn = call.function if call.function is defined else call -%}\n"
    "{{- '<tool_call>\\n' + ({'name': fn.name, 'arguments': fn.arguments} | tojson) + '\\n</tool_call>' -}}\n"
    "{%- endfor -%}\n"
    "{{- '<|im_end|>\\n\\n' -}}\n"
    "{%- elif message.role == 'tool' -%}\n"
    "{{- '<|im_start|>tool\\n<tool_output>\\n' + message.content + '\\n</tool_output><|im_end|>\\n\\n' -}}\n"
    "{%- elif message.role == 'system' and not loop.first -%}\n"
    "{{- '<|im_start|>system\\n' + message.content + '<|im_end|>\\n\\n' -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}\n"
    "{%- if thinking.on -%}{{- '<think>\\n' -}}{%- else -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}\n"
    "{%- endif -%}"
)

# Names a tokenizer_config.json may give as its "chat_template" to ask for a built-in template.
BUILTIN_TEMPLATES = {"ernie-4.5-thinking": THINKING_CHAT_TEMPLATE}
