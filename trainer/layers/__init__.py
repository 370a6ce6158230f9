"""Our Keras 3 layers: the LSTM with its gates written out (`lstm`), the vanilla RNN
(`rnn`), their shared recurrence (`recurrent_base`), Bahdanau/Luong attention
(`attention`) and the fused softmax output layer (`output_layer`)."""
