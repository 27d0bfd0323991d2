"""A word-level language model trained the way third-party PyTorch scripts do it, written in the
style of the public PyTorch word_language_model example (a Dictionary/Corpus, batchify/get_batch,
an RNNModel of Embedding -> recurrent layer -> Linear, truncated BPTT with repackage_hidden,
torch.nn.utils.clip_grad_norm_, manual SGD, whole-model torch.save / torch.load, evaluation, then
sampling words). It knows nothing of rnnfast except one line: where the recurrent layer class
comes from (--layers torch|rnnfast). tests/test_example_script.py runs it both ways.

    python word_language_model.py --data corpus.txt --layers rnnfast --model LSTM --out result.json
"""
import argparse
import json
import math
import os

import torch
import torch.nn as nn

parser = argparse.ArgumentParser(description="word-level language model")
parser.add_argument("--data", required=True, help="a text file: 80%% train, 10%% valid, 10%% test lines")
parser.add_argument("--layers", choices=["torch", "rnnfast"], default="torch")
parser.add_argument("--model", default="LSTM", help="RNN_TANH, RNN_RELU, LSTM, GRU")
parser.add_argument("--emsize", type=int, default=32)
parser.add_argument("--nhid", type=int, default=32)
parser.add_argument("--nlayers", type=int, default=2)
parser.add_argument("--lr", type=float, default=1.0)
parser.add_argument("--clip", type=float, default=0.25)
parser.add_argument("--epochs", type=int, default=2)
parser.add_argument("--max-batches", type=int, default=20, help="training batches per epoch")
parser.add_argument("--batch_size", type=int, default=8)
parser.add_argument("--bptt", type=int, default=12)
parser.add_argument("--dropout", type=float, default=0.2)
parser.add_argument("--seed", type=int, default=1111)
parser.add_argument("--save", default="model.pt")
parser.add_argument("--words", type=int, default=20, help="words to generate")
parser.add_argument("--out", required=True, help="where to write the results (json)")
args = parser.parse_args()

if args.layers == "rnnfast":  # the only line that differs from a plain torch.nn script
    import rnnfast as recurrent
else:
    recurrent = nn

torch.manual_seed(args.seed)


# ---- data ----------------------------------------------------------------------------------------

class Dictionary:
    def __init__(self):
        self.word2idx = {}
        self.idx2word = []

    def add_word(self, word):
        if word not in self.word2idx:
            self.idx2word.append(word)
            self.word2idx[word] = len(self.idx2word) - 1
        return self.word2idx[word]

    def __len__(self):
        return len(self.idx2word)


class Corpus:
    def __init__(self, path):
        self.dictionary = Dictionary()
        with open(path, encoding="utf8") as f:
            lines = [line for line in f if line.strip()]
        n = len(lines)
        self.train = self.tokenize(lines[: int(n * 0.8)])
        self.valid = self.tokenize(lines[int(n * 0.8): int(n * 0.9)])
        self.test = self.tokenize(lines[int(n * 0.9):])

    def tokenize(self, lines):
        ids = []
        for line in lines:
            for word in line.split() + ["<eos>"]:
                ids.append(self.dictionary.add_word(word))
        return torch.tensor(ids, dtype=torch.int64)


def batchify(data, bsz):
    nbatch = data.size(0) // bsz
    data = data.narrow(0, 0, nbatch * bsz)
    return data.view(bsz, -1).t().contiguous()


def get_batch(source, i):
    seq_len = min(args.bptt, len(source) - 1 - i)
    return source[i:i + seq_len], source[i + 1:i + 1 + seq_len].reshape(-1)


corpus = Corpus(args.data)
train_data = batchify(corpus.train, args.batch_size)
val_data = batchify(corpus.valid, 10)
test_data = batchify(corpus.test, 10)
ntokens = len(corpus.dictionary)


# ---- model ---------------------------------------------------------------------------------------

class RNNModel(nn.Module):
    """Container module with an encoder, a recurrent module, and a decoder."""

    def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5):
        super().__init__()
        self.ntoken = ntoken
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type in ["LSTM", "GRU"]:
            self.rnn = getattr(recurrent, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
        else:
            nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
            self.rnn = recurrent.RNN(ninp, nhid, nlayers, nonlinearity=nonlinearity, dropout=dropout)
        self.decoder = nn.Linear(nhid, ntoken)
        self.init_weights()
        self.rnn_type = rnn_type
        self.nhid = nhid
        self.nlayers = nlayers

    def init_weights(self):
        initrange = 0.1
        nn.init.uniform_(self.encoder.weight, -initrange, initrange)
        nn.init.zeros_(self.decoder.bias)
        nn.init.uniform_(self.decoder.weight, -initrange, initrange)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        output = self.drop(output)
        decoded = self.decoder(output).view(-1, self.ntoken)
        return nn.functional.log_softmax(decoded, dim=1), hidden

    def init_hidden(self, bsz):
        weight = next(self.parameters())
        if self.rnn_type == "LSTM":
            return (weight.new_zeros(self.nlayers, bsz, self.nhid), weight.new_zeros(self.nlayers, bsz, self.nhid))
        return weight.new_zeros(self.nlayers, bsz, self.nhid)


def repackage_hidden(h):
    if isinstance(h, torch.Tensor):
        return h.detach()
    return tuple(repackage_hidden(v) for v in h)


model = RNNModel(args.model, ntokens, args.emsize, args.nhid, args.nlayers, args.dropout)
# type checks a third-party script may make on its layer
assert isinstance(model.rnn, nn.RNNBase) and model.rnn.mode == args.model
criterion = nn.NLLLoss()


def evaluate(data_source):
    model.eval()
    total_loss = 0.0
    hidden = model.init_hidden(10)
    with torch.no_grad():
        for i in range(0, data_source.size(0) - 1, args.bptt):
            data, targets = get_batch(data_source, i)
            output, hidden = model(data, hidden)
            hidden = repackage_hidden(hidden)
            total_loss += len(data) * criterion(output, targets).item()
    return total_loss / (len(data_source) - 1)


def train():
    model.train()
    losses = []
    hidden = model.init_hidden(args.batch_size)
    for batch, i in enumerate(range(0, train_data.size(0) - 1, args.bptt)):
        if batch == args.max_batches:
            break
        data, targets = get_batch(train_data, i)
        model.zero_grad()
        hidden = repackage_hidden(hidden)
        output, hidden = model(data, hidden)
        loss = criterion(output, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-args.lr)
        losses.append(loss.item())
    return losses


train_losses, val_losses = [], []
best_val_loss = None
for epoch in range(1, args.epochs + 1):
    train_losses += train()
    val_loss = evaluate(val_data)
    val_losses.append(val_loss)
    if not best_val_loss or val_loss < best_val_loss:
        with open(args.save, "wb") as f:
            torch.save(model, f)
        best_val_loss = val_loss

# Load the best saved model: torch.load's default weights_only=True, with this script's own classes
# (and torch.nn's, which torch does not allow by default either) allowlisted.
safe = [RNNModel, nn.Dropout, nn.Embedding, nn.Linear, nn.LSTM, nn.GRU, nn.RNN]
with open(args.save, "rb") as f, torch.serialization.safe_globals(safe):
    model = torch.load(f)
test_loss = evaluate(test_data)

# Generate words (generate.py): feed the sampled word back, one step at a time.
model.eval()
hidden = model.init_hidden(1)
input = torch.randint(ntokens, (1, 1), dtype=torch.long)
words = []
with torch.no_grad():
    for _ in range(args.words):
        output, hidden = model(input, hidden)
        word_weights = output.squeeze().div(1.0).exp()
        word_idx = torch.multinomial(word_weights, 1)[0]
        input.fill_(word_idx)
        words.append(corpus.dictionary.idx2word[word_idx])

with open(args.out, "w") as f:
    json.dump({"layer_class": f"{type(model.rnn).__module__}.{type(model.rnn).__name__}",
               "train_losses": train_losses, "val_losses": val_losses, "test_loss": test_loss,
               "test_ppl": math.exp(test_loss), "words": words, "ntokens": ntokens,
               "saved_bytes": os.path.getsize(args.save)}, f)
print(f"| end of training | test loss {test_loss:5.2f} | test ppl {math.exp(test_loss):8.2f}")
print(" ".join(words))
