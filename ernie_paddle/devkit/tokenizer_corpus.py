"""Built-in mixed Chinese / English / emoji text for training the demo SentencePiece model (no download)."""

import random

_ENGLISH = """\
The quick brown fox jumps over the lazy dog.
Large language models predict the next token from the previous ones.
PaddlePaddle runs the model on a CPU or on a GPU.
Please convert the checkpoint and check that the logits agree.
A small model is useful for tests because it loads in a second.
The server streams tokens to many clients at the same time.
What is the capital of France? The capital of France is Paris.
Write a short poem about the sea, the wind and the stars.
User questions should get clear, helpful and honest answers.
Numbers like 42, 3.14 and 2025 appear in many documents.
She said hello, and he answered with a smile.
Machine learning needs data, compute and careful evaluation.
Open the file, read every line, and close it again.
Weather today: sunny in the morning, rain in the evening.
Mixture of experts routes each token to a few experts.
The tokenizer splits text into pieces and maps pieces to ids.
Good software is tested, documented and easy to change.
"""

_CHINESE = """\
今天天气很好，我们去公园散步吧。
人工智能正在改变我们的生活和工作方式。
文心大模型可以回答问题、写作和翻译。
请把这个模型转换成飞桨格式，并检查结果是否一致。
北京是中国的首都，上海是最大的城市。
学习一门新的语言需要时间和耐心。
这个服务器可以同时为很多用户提供流式输出。
你好！很高兴认识你，有什么可以帮你的吗？
春天来了，花开了，小鸟在树上唱歌。
数据、算力和算法是深度学习的三个要素。
我喜欢喝茶，也喜欢看书和听音乐。
他每天早上六点起床，然后去跑步。
请用简单的话解释一下什么是神经网络。
长江和黄河是中国最长的两条河流。
这道数学题的答案是一百二十三。
小明的妈妈做了一桌子好吃的饭菜。
明天下午三点在会议室开会，请准时参加。
"""

_EMOJI = ["😀", "😂", "👍", "🎉", "🚀", "❤️", "🌟", "🐼", "☕", "✅"]

_EN_WORDS = (
    "model token text data server client request answer question code test file weight layer "
    "expert router cache batch stream prompt reply user system assistant chat number value "
    "fast slow small large new old good clear simple careful open close read write run load"
).split()
_ZH_WORDS = (
    "模型 文本 数据 服务 用户 问题 回答 代码 测试 文件 权重 专家 缓存 流式 提示 系统 助手 "
    "聊天 数字 快速 简单 清楚 打开 关闭 读取 写入 运行 加载 中文 英文 句子 词语 世界 朋友 "
    "学校 老师 学生 电脑 手机 城市 时间 今天 明天 音乐 电影 图书 科学 技术 经济 历史"
).split()


def demo_corpus(seed: int = 0, n_mixed: int = 2500) -> list[str]:
    """Return the training lines: the fixed sentences plus ``n_mixed`` seeded mixed-language lines."""
    rng = random.Random(seed)
    lines = [s for s in (_ENGLISH + _CHINESE).splitlines() if s]
    for _ in range(n_mixed):
        parts = []
        for _ in range(rng.randint(4, 10)):
            kind = rng.random()
            if kind < 0.45:
                parts.append(rng.choice(_EN_WORDS))
            elif kind < 0.9:
                parts.append(rng.choice(_ZH_WORDS))
            elif kind < 0.95:
                parts.append(str(rng.randint(0, 999)))
            else:
                parts.append(rng.choice(_EMOJI))
        sep = rng.choice([" ", "", "，", ", "])
        lines.append(sep.join(parts) + rng.choice([".", "。", "!", "？", ""]))
    return lines
